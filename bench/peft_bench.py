"""LoRA against a frozen encoder, for a tiny pretrained text, image and audio Hugging Face model.

    OMP_NUM_THREADS=1 .venv/bin/python bench/peft_bench.py          # a few minutes on one CPU core

Per modality: a table on disk (texts, PNG files or WAV files + a label), `polyfuse init`, then two runs of
`polyfuse train` with the same config but for the encoder: frozen (only fusion and head train) and LoRA
(rank 4 on the attention's query and value, merged into the saved backbone). Scored on the test split
(held out: neither run sees it while training) from each run's metrics.json.

"Pretrained" offline, with no hub:
  text   the packaged all-MiniLM-L6-v2 (text.minilm). Task: who acts on whom. "anna thanked ben" has
         label "group a" when the subject (not the object) is one of four names, so both labels use the
         same words and only their roles differ.
  image  a ViT (32x32, patch 8, 4 layers of 64) pretrained here first, on 3000 images of a related
         task: is the bar horizontal or vertical (wherever it is, whatever its colour). Task: is a
         diagonal bar falling or rising.
  audio  an AST (16 mel bins, 64 frames, 4 layers of 64) pretrained here first, on 1500 clips of a
         related task: a steady tone or clicks (horizontal or vertical lines of the spectrogram). Task:
         does a one-octave pitch sweep rise or fall (a shallow diagonal of the spectrogram).
The backbone learns its inputs on the pretraining task; the downstream task needs what those features
keep only in part, which LoRA can adapt and a frozen encoder cannot.

Results: bench/results/peft.json and peft.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import transformers
from alignment import init_and_train  # `polyfuse init` + `polyfuse train` in child processes
from PIL import Image

from polyfuse.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
NAMES_A = ("anna", "ben", "carl", "dora")
NAMES_B = ("emma", "fred", "gina", "hugo")
VERBS = ("thanked", "called", "helped", "visited", "praised", "followed", "greeted", "paid")
RATE = 16_000
CLIP_SECONDS = 0.64  # 64 frames of 10 ms: the AST's whole input
IMAGE_SIZE = 32
TINY_TRANSFORMER = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


# --- tables -------------------------------------------------------------------------------------------


def text_table(folder: Path, rows: int, rng: np.random.Generator) -> Path:
    names = NAMES_A + NAMES_B
    records = []
    for _ in range(rows):
        subject, obj = rng.choice(len(names), size=2, replace=False)
        sentence = f"{names[subject]} {rng.choice(VERBS)} {names[obj]}"
        records.append({"sentence": sentence, "label": "group a" if subject < 4 else "group b"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "text.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def noise_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(32, 32, 3) uint8 background noise and a bright colour (3,) for the bar."""
    return rng.integers(0, 60, (IMAGE_SIZE, IMAGE_SIZE, 3)), rng.integers(120, 256, 3)


def bar_image(rng: np.random.Generator, horizontal: bool) -> np.ndarray:
    """Pretraining: one bar, 12 x 3 pixels, horizontal or vertical, anywhere, of any bright colour."""
    pixels, colour = noise_image(rng)
    height, width = (3, 12) if horizontal else (12, 3)
    x0, y0 = int(rng.integers(0, IMAGE_SIZE - width + 1)), int(rng.integers(0, IMAGE_SIZE - height + 1))
    pixels[y0 : y0 + height, x0 : x0 + width] = colour
    return pixels.astype(np.uint8)


def diagonal_image(rng: np.random.Generator, falling: bool) -> np.ndarray:
    """Downstream: one diagonal bar, 10 pixels long and 2 wide, falling (\\) or rising (/)."""
    pixels, colour = noise_image(rng)
    x0, y0 = int(rng.integers(0, IMAGE_SIZE - 11)), int(rng.integers(0, IMAGE_SIZE - 10))
    for step in range(10):
        x = x0 + (step if falling else 9 - step)
        pixels[y0 + step, x : x + 2] = colour
    return pixels.astype(np.uint8)


def noise(rng: np.random.Generator) -> np.ndarray:
    return (0.02 * rng.normal(size=int(CLIP_SECONDS * RATE))).astype(np.float32)


def tone_or_clicks(rng: np.random.Generator, tone: bool) -> np.ndarray:
    """Pretraining: a steady tone (300-4000 Hz, 0.15-0.4 s) or 1-3 clicks (5 ms noise bursts), anywhere
    in the clip: horizontal against vertical lines of the spectrogram."""
    wave = noise(rng)
    if tone:
        length = int(rng.uniform(0.15, 0.4) * RATE)
        start = int(rng.integers(0, wave.size - length))
        t = np.arange(length) / RATE
        wave[start : start + length] += (
            0.4 * np.sin(2 * np.pi * rng.uniform(300, 4000) * t) * np.hanning(length)
        )
    else:
        for _ in range(int(rng.integers(1, 4))):
            start = int(rng.integers(0, wave.size - 80))
            wave[start : start + 80] += 0.5 * rng.normal(size=80) * np.hanning(80)
    return wave


def chirp(rng: np.random.Generator, rising: bool) -> np.ndarray:
    """Downstream: a 0.3 s sweep over one octave (from 600-1500 Hz up, or down to it): a shallow diagonal
    of the 16-bin spectrogram."""
    wave = noise(rng)
    length = int(0.3 * RATE)
    start = int(rng.integers(0, wave.size - length))
    low = rng.uniform(600, 1500)
    f0, f1 = (low, 2 * low) if rising else (2 * low, low)
    t = np.arange(length) / RATE
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))  # linear sweep f0 -> f1
    wave[start : start + length] += 0.4 * np.sin(phase) * np.hanning(length)
    return wave


def media_table(
    folder: Path,
    rows: int,
    rng: np.random.Generator,
    kind: str,
    make: Callable[[bool], Any],
    labels: tuple[str, str],
) -> Path:
    """A table of `rows` files made by make(first), labelled labels[0] (first) or labels[1]."""
    (folder / "media").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        first = bool(rng.integers(0, 2))
        if kind == "image":
            name = f"media/{i}.png"
            Image.fromarray(make(first)).save(folder / name)
        else:
            name = f"media/{i}.wav"
            sf.write(folder / name, make(first), RATE)
        records.append({kind: name, "label": labels[0] if first else labels[1]})
    path = folder / f"{kind}.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


# --- pretraining --------------------------------------------------------------------------------------


def pretrain(model: Any, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> float:
    """Plain supervised pretraining; returns the accuracy on the last 20 % (held out)."""
    torch.manual_seed(seed)
    cut = int(0.8 * len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(cut)
        for start in range(0, cut, 64):
            rows = order[start : start + 64]
            loss = model(inputs[rows], labels=labels[rows]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(inputs[cut:]).logits.argmax(-1)
    return float((predicted == labels[cut:]).float().mean())


def pretrained_vit(folder: Path, rows: int, epochs: int, rng: np.random.Generator) -> tuple[Path, float]:
    processor = transformers.ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    horizontal = rng.integers(0, 2, rows)
    images = [bar_image(rng, bool(h)) for h in horizontal]
    pixels = torch.from_numpy(processor(images=images, return_tensors="np")["pixel_values"])
    config = transformers.ViTConfig(image_size=IMAGE_SIZE, patch_size=8, num_labels=2, **TINY_TRANSFORMER)
    model = transformers.ViTForImageClassification(config)
    accuracy = pretrain(model, pixels, torch.from_numpy(horizontal), epochs, seed=0)
    model.vit.save_pretrained(folder)  # the backbone alone, as a hub checkpoint of ViTModel
    processor.save_pretrained(str(folder))
    return folder, accuracy


def pretrained_ast(folder: Path, rows: int, epochs: int, rng: np.random.Generator) -> tuple[Path, float]:
    tones = rng.integers(0, 2, rows)
    waves = [tone_or_clicks(rng, bool(t)) for t in tones]
    shape = {"num_mel_bins": 16, "max_length": 64, "sampling_rate": RATE}
    # AST normalises its fbank with its pretraining data's mean and std (AudioSet's by default, which
    # would squash these quiet clips into a near-constant input): measure them here, as AST's authors do.
    raw = transformers.ASTFeatureExtractor(**shape, do_normalize=False)(waves, sampling_rate=RATE)
    fbank = np.stack(raw["input_values"])  # (N, 64 frames, 16 mels)
    extractor = transformers.ASTFeatureExtractor(**shape, mean=float(fbank.mean()), std=float(fbank.std()))
    features = torch.from_numpy(extractor(waves, sampling_rate=RATE, return_tensors="np")["input_values"])
    config = transformers.ASTConfig(
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
        max_length=64,
        num_mel_bins=16,
        num_labels=2,
        **TINY_TRANSFORMER,
    )
    model = transformers.ASTForAudioClassification(config)
    accuracy = pretrain(model, features, torch.from_numpy(tones), epochs, seed=0)
    model.audio_spectrogram_transformer.save_pretrained(folder)
    extractor.save_pretrained(str(folder))
    return folder, accuracy


# --- the two runs per modality ------------------------------------------------------------------------


def compare(table: Path, work: Path, column: str, encoder: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Frozen encoder against LoRA, the same config (epochs, learning rate, fusion, head) otherwise; test
    metrics, the final training loss (does the head fit the training split at all?), parameter counts."""
    results: dict[str, Any] = {}
    for mode in ("frozen", "lora"):

        def edit(raw: dict[str, Any], mode: str = mode) -> None:
            raw["encoders"] = {
                column: {
                    **encoder,
                    "trainable": mode == "lora",
                    "adapter": {"method": "lora", "rank": 4, "alpha": 8} if mode == "lora" else None,
                }
            }
            # a small fusion and head, so that the share of trainable parameters is the adapter's
            raw["fusion"].update(
                name="concat", output_dim=16, modality_dropout=0.0, options={"hidden_dim": 16}
            )
            raw["training"].update(
                epochs=epochs,
                batch_size=32,
                learning_rate=3e-3,
                early_stopping_patience=None,
            )
            raw["data"]["cache_dir"] = str(work / "cache")

        run, test, seconds = init_and_train(
            table, work, f"{column}-{mode}", ["-t", "label", "--fusion", "concat"], edit
        )
        training = json.loads((run / "metrics.json").read_text())["training"]
        log = pd.read_csv(run / "logs" / "csv" / "version_0" / "metrics.csv")
        results[mode] = {
            "final_train_loss": round(float(log["train_loss_epoch"].dropna().iloc[-1]), 4),
            "test_accuracy": round(test["label"]["accuracy"], 4),
            "test_macro_f1": round(test["label"]["macro_f1"], 4),
            "test_rows": test["label"]["rows"],
            "trainable_parameters": training["trainable_parameters"],
            "parameters": training["parameters"],
            "trainable_percent": round(100 * training["trainable_parameters"] / training["parameters"], 2),
            "seconds": round(seconds, 1),
        }
        print(column, mode, results[mode], flush=True)
    results["lora_parameters"] = (
        results["lora"]["trainable_parameters"] - results["frozen"]["trainable_parameters"]
    )
    results["lora_percent_of_model"] = round(
        100 * results["lora_parameters"] / results["lora"]["parameters"], 2
    )
    return results


def text_run(work: Path, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    table = text_table(work / "text", args.rows, rng)
    return {
        "backbone": "all-MiniLM-L6-v2 (packaged)",
        "task": "subject's group in '<name> <verb> <name>'",
        **compare(table, work, "sentence", {"name": "text.minilm"}, args.epochs),
    }


# modality -> (backbone, downstream task, pretraining function, pretraining rows, downstream example
# maker (rng, first label?), the two labels)
PRETRAINED_TASKS: dict[str, tuple[str, str, Any, int, Any, tuple[str, str]]] = {
    "image": (
        "ViT 32x32 / patch 8, 4 x 64, pretrained here on bar orientation",
        "falling or rising diagonal bar",
        pretrained_vit,
        3000,
        diagonal_image,
        ("falling", "rising"),
    ),
    "audio": (
        "AST 16 mels x 64 frames / patch 8, 4 x 64, pretrained here on tone vs clicks",
        "rising or falling one-octave pitch sweep",
        pretrained_ast,
        1500,
        chirp,
        ("rising", "falling"),
    ),
}


def pretrained_run(
    modality: str, work: Path, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    """Pretrain the backbone, build the downstream table, and run frozen and LoRA on it."""
    backbone_name, task, pretrain, pretraining_rows, make, labels = PRETRAINED_TASKS[modality]
    backbone, accuracy = pretrain(work / f"{modality}-backbone", pretraining_rows, args.pretrain_epochs, rng)
    table = media_table(work / modality, args.rows, rng, modality, lambda first: make(rng, first), labels)
    encoder = {"name": f"{modality}.hf", "options": {"name_or_path": str(backbone)}}
    return {
        "backbone": backbone_name,
        "pretraining_held_out_accuracy": round(accuracy, 4),
        "task": task,
        **compare(table, work, modality, encoder, args.epochs),
    }


RUNS = {
    "text": text_run,
    "image": functools.partial(pretrained_run, "image"),
    "audio": functools.partial(pretrained_run, "audio"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500, help="rows per downstream table")
    parser.add_argument("--epochs", type=int, default=12, help="downstream epochs (both runs)")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--modalities", nargs="+", choices=list(RUNS), default=list(RUNS))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for modality in args.modalities:
            # each modality from its own seed, so running one alone gives the figures of the full run
            results[modality] = {
                **RUNS[modality](Path(tmp), args, np.random.default_rng(0)),
                "epochs": args.epochs,
                "seconds": round(time.perf_counter() - start, 1),
            }
            start = time.perf_counter()
    previous = RESULTS / "peft.json"
    if previous.exists():  # a run of some modalities keeps the others' figures
        results = {**json.loads(previous.read_text())["results"], **results}
    write(
        {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
            },
            "settings": {
                "rows_per_table": args.rows,
                "pretrain_epochs": args.pretrain_epochs,
                "lora": {"rank": 4, "alpha": 8, "targets": "per family (attention query, value)"},
            },
            "results": results,
        }
    )


def write(summary: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "peft.json", json.dumps(summary, indent=2) + "\n")
    lines = [
        "# LoRA vs frozen encoder (bench/peft_bench.py)",
        "",
        "| modality | backbone | task | frozen test acc. | LoRA test acc. | test rows | final train loss "
        "frozen / LoRA | LoRA params (% of model) | trainable with LoRA (% of model) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for modality, r in summary["results"].items():
        lines.append(
            f"| {modality} | {r['backbone']} | {r['task']} | {r['frozen']['test_accuracy']:.3f} | "
            f"{r['lora']['test_accuracy']:.3f} | {r['lora']['test_rows']} | "
            f"{r['frozen']['final_train_loss']:.3f} / {r['lora']['final_train_loss']:.3f} | {r['lora_parameters']:,} "
            f"({r['lora_percent_of_model']} %) | {r['lora']['trainable_parameters']:,} of "
            f"{r['lora']['parameters']:,} ({r['lora']['trainable_percent']} %) |"
        )
    seconds = ", ".join(
        f"{m} {r.get('seconds', '?')} s ({r.get('epochs', '?')} epochs)"
        for m, r in summary["results"].items()
    )
    lines += ["", f"Wall time per modality: {seconds}; settings: {json.dumps(summary['settings'])}", ""]
    atomic_write_text(RESULTS / "peft.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
