"""Tiny randomly initialised Hugging Face backbones of every family polyfuse supports, each saved with
save_pretrained together with its own processor (tokenizer, image processor, feature extractor), as a hub
checkpoint is. Hidden size 32 and one or two layers, so building, training and loading take moments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers

# family -> (modality, the model's own input layout in words), for test ids and tables
TEXT_FAMILIES = ("bert", "roberta")
IMAGE_FAMILIES = ("vit", "clip_vision", "clip", "swin", "convnext", "resnet")
AUDIO_FAMILIES = ("wav2vec2", "hubert", "whisper", "ast")
WORDS = [
    "item",
    "was",
    "great",
    "poor",
    "and",
    "cheap",
    "pricey",
    "fine",
    "the",
    "a",
    "good",
    "bad",
    "red",
    "green",
    "blue",
    "photo",
    "sound",
    "of",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "zero",
    "digit",
    "spoken",
    "review",
    "quite",
    "very",
    "not",
]
TEXT_MAX_POSITIONS = 64


def _bert_tokenizer() -> Any:
    """A WordPiece vocabulary of the test words (BERT's kind)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    digits = [str(i) for i in range(10)]
    tokens = [*specials, *digits, *WORDS]
    tokens += [f"[unused{i}]" for i in range(100 - len(tokens))]  # 100 ids, as the encoder tests draw
    vocab = {token: i for i, token in enumerate(tokens)}
    return transformers.BertTokenizerFast(vocab=vocab, model_max_length=TEXT_MAX_POSITIONS)


def _bpe_tokenizer() -> Any:
    """A byte-level BPE (RoBERTa's kind) trained on the test words: its ids differ from BERT's."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(WORDS)] * 4,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=TEXT_MAX_POSITIONS,
    )


def build(family: str, folder: Path) -> Path:
    """Save the tiny `family` backbone and its processor to `folder`; returns it."""
    tiny: dict[str, Any] = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    vision = {**tiny, "image_size": 32, "patch_size": 8}
    speech = {
        **tiny,
        "vocab_size": 10,
        "conv_dim": (16, 16),
        "conv_stride": (5, 2),
        "conv_kernel": (10, 3),
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "layerdrop": 0.0,  # HF's default 0.1 skips whole layers at random in training
    }
    # ImageNet / CLIP statistics and 32-pixel crops: far from polyfuse's own 64x64, mean 0.5 images
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    square = {"size": {"height": 32, "width": 32}}
    processor: Any
    model: Any
    if family == "bert":
        processor = _bert_tokenizer()
        model = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=len(processor),
                max_position_embeddings=TEXT_MAX_POSITIONS,
                **{**tiny, "num_hidden_layers": 2},
            )
        )
    elif family == "roberta":
        processor = _bpe_tokenizer()
        model = transformers.RobertaModel(
            transformers.RobertaConfig(
                vocab_size=len(processor),
                max_position_embeddings=TEXT_MAX_POSITIONS + 2,
                pad_token_id=1,
                **tiny,
            )
        )
    elif family == "vit":
        processor = transformers.ViTImageProcessorPil(**square, **imagenet)
        model = transformers.ViTModel(transformers.ViTConfig(**vision))
    elif family in ("clip_vision", "clip"):
        processor = transformers.CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        if family == "clip_vision":
            model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision))
        else:
            text = {**tiny, "vocab_size": 100, "bos_token_id": 0, "eos_token_id": 2}
            model = transformers.CLIPModel(
                transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
            )
    elif family == "swin":  # no CLS token: pooled is its pooler's token mean
        processor = transformers.ViTImageProcessorPil(**square, **imagenet)
        model = transformers.SwinModel(
            transformers.SwinConfig(
                image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4
            )
        )
    elif family in ("convnext", "resnet"):
        processor = transformers.ConvNextImageProcessorPil(
            size={"shortest_edge": 32}, crop_pct=0.875, **imagenet
        )
        if family == "convnext":
            model = transformers.ConvNextModel(
                transformers.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32)
            )
        else:
            model = transformers.ResNetModel(
                transformers.ResNetConfig(
                    embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
                )
            )
    elif family == "wav2vec2":  # group norm in the feature encoder: takes no attention_mask
        processor = transformers.Wav2Vec2FeatureExtractor(
            sampling_rate=16_000, do_normalize=True, return_attention_mask=False
        )
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**speech))
    elif family == "hubert":  # layer norm in the feature encoder: takes the attention_mask
        processor = transformers.Wav2Vec2FeatureExtractor(
            sampling_rate=16_000, do_normalize=True, return_attention_mask=True
        )
        model = transformers.HubertModel(transformers.HubertConfig(**speech, feat_extract_norm="layer"))
    elif family == "whisper":
        # 1 s windows (100 frames) instead of 30 s (3000): max_source_positions = frames / 2
        processor = transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1)
        model = transformers.WhisperModel(
            transformers.WhisperConfig(
                d_model=32,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=37,
                decoder_ffn_dim=37,
                num_mel_bins=80,
                max_source_positions=50,
                max_target_positions=16,
                vocab_size=100,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=1,
            )
        )
    elif family == "ast":
        processor = transformers.ASTFeatureExtractor(num_mel_bins=16, max_length=32)
        model = transformers.ASTModel(
            transformers.ASTConfig(
                **tiny, patch_size=8, frequency_stride=8, time_stride=8, max_length=32, num_mel_bins=16
            )
        )
    else:
        raise ValueError(f"no tiny model for family {family!r}")
    model.save_pretrained(folder)
    processor.save_pretrained(str(folder))
    return folder


def build_all(root: Path) -> dict[str, Path]:
    return {f: build(f, root / f) for f in (*TEXT_FAMILIES, *IMAGE_FAMILIES, *AUDIO_FAMILIES)}
