"""Multimodal VAEs on AV-Digits: cross-modal generation, joint samples, anomaly detection.

    .venv/bin/python bench/generation.py                     # every stage
    .venv/bin/python bench/generation.py --joints mopoe      # one joint posterior
    .venv/bin/python bench/generation.py --epochs 10 --work /tmp/gen

Every model is a real `polyfuse init` + `polyfuse train` in a child process (init's defaults with the
av-digits preset, unless said):
  judges    an audio-only classifier (`init -t label`, the image ignored) trained on AV-Digits' training
            clips, and an image classifier trained on the ~9,700 MNIST test-set images AV-Digits does not
            test on (tested on AV-Digits' test images): they judge generated images and sounds.
  vae       `init --objective vae` with joint poe / moe / mopoe, side by side; on the test split:
            audio→image and image→audio coherence (the judge recognises the row's digit in what was
            generated from the other input), joint coherence of unconditional samples (both judges agree;
            from the prior fitted to the validation codes, and from N(0, I) for comparison),
            Fréchet distance in each judge's feature space (no Inception weights offline), reconstruction
            errors, and the anomaly score's ROC-AUC for three kinds of out-of-distribution rows: AV-Digits-N
            rows (noisy image and audio) under the clean-trained model, rows whose audio says another digit
            than the image shows, and images from outside MNIST (the synthetic table's shapes, image only,
            against test images alone).
Sample grids (PNG) and WAVs are written to bench/results/generation/; figures to bench/results/generation.json
and .md (rewritten after every model).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from alignment import polyfuse  # the same child-process runner as the alignment bench (bench/ is on sys.path)
from PIL import Image, ImageFilter

from polyfuse.atomic import atomic_write_text
from polyfuse.data.datasets import build_av_digits, default_data_dir, make_synthetic_table

RESULTS = Path(__file__).parent / "results"
SAMPLES = RESULTS / "generation"


def init_and_train(
    table: Path, work: Path, name: str, init_args: list[str], edit: Any, epochs: int | None
) -> tuple[Path, float]:
    config = work / f"{name}.yaml"
    polyfuse(
        "init",
        str(table),
        "--preset",
        "av-digits",
        *init_args,
        "-o",
        str(config),
        "--force",
        log=work / f"{name}-init.log",
    )
    raw = yaml.safe_load(config.read_text())
    init_epochs = raw["training"]["epochs"]
    epochs = epochs or init_epochs
    raw["training"]["epochs"] = epochs
    for objective in raw["objectives"]:  # init sized the KL warm-up to its own epochs: keep its share
        options = objective["options"]
        if "kl_warmup_steps" in options:
            options["kl_warmup_steps"] = max(1, round(options["kl_warmup_steps"] * epochs / init_epochs))
    edit(raw)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = work / name
    if (run / "model" / "polyfuse.json").exists():  # a kept --work folder: reuse finished runs
        return run, json.loads((run / "metrics.json").read_text())["training"]["seconds"]
    seconds = polyfuse("train", str(config), "-o", str(run), log=work / f"{name}.log")
    return run, seconds


def mnist_judge_table(av_table: Path, data: Path, work: Path, blurred: bool = False) -> Path:
    """An image table for the image judge: every MNIST test-set image that is not an AV-Digits test image
    (~9,700; AV-Digits pairs 3,000 of the 10,000) split 90 / 10 into train / val, and the AV-Digits test
    images as its test split.

    `blurred` adds a copy of every train / val image blurred (Gaussian, radius 0.5-2.5 px) and dimmed
    (contrast × 0.4-1.0): a judge of sharp digits alone reads real test digits blurred by 1.5 px as "8"
    (0.22-0.27 correct), so it cannot tell a blurry right digit from a wrong one."""
    folder = work / ("judge-mnist-blurred" if blurred else "judge-mnist")
    path = folder / "mnist_judge.csv"
    if path.exists():
        return path
    with gzip.open(data / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(data / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    av = pd.read_csv(av_table)
    test = av[av["split"] == "test"]
    held_out = {np.asarray(Image.open(av_table.parent / p).convert("L")).tobytes() for p in test["image"]}
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        if pixels.tobytes() in held_out:
            continue
        name = f"images/{i:05d}.png"
        Image.fromarray(pixels).save(folder / name)
        split = "val" if rng.random() < 0.1 else "train"
        rows.append({"image": name, "label": int(label), "split": split})
        if blurred:
            radius, contrast = rng.uniform(0.5, 2.5), rng.uniform(0.4, 1.0)
            soft = Image.fromarray((pixels * contrast).astype(np.uint8)).filter(
                ImageFilter.GaussianBlur(radius)
            )
            soft.save(folder / f"images/{i:05d}_blurred.png")
            rows.append({"image": f"images/{i:05d}_blurred.png", "label": int(label), "split": split})
    rows += [
        {"image": str((av_table.parent / p).resolve()), "label": int(label), "split": "test"}
        for p, label in zip(test["image"], test["label"], strict=True)
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def train_judges(table: Path, work: Path, epochs: int, data: Path) -> dict[str, Path]:
    """The audio judge on AV-Digits' own training clips (FSDD has no others); the image judge on the MNIST
    images AV-Digits does not test on (`mnist_judge_table`)."""
    judges = {}

    def audio_only(raw: dict[str, Any]) -> None:
        raw["data"]["columns"]["image"] = "ignore"
        raw["encoders"].pop("image", None)

    run, _ = init_and_train(
        table, work, "judge-audio", ["-t", "label", "-c", "image=ignore"], audio_only, epochs
    )
    judges["audio"] = run / "model"
    run, _ = init_and_train(
        mnist_judge_table(table, data, work),
        work,
        "judge-image-mnist",
        ["-t", "label"],
        lambda raw: None,
        epochs,
    )
    judges["image"] = run / "model"
    run, _ = init_and_train(
        mnist_judge_table(table, data, work, blurred=True),
        work,
        "judge-image-blur-tolerant",
        ["-t", "label"],
        lambda raw: None,
        epochs,
    )
    judges["image_blur_tolerant"] = run / "model"
    return judges


def mismatched(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The rows with each audio swapped for the audio of a row of another digit."""
    rng = np.random.default_rng(seed)
    out = rows.copy()
    audio = []
    for label in rows["label"]:
        others = rows[rows["label"] != label]
        audio.append(others["audio"].iloc[int(rng.integers(len(others)))])
    out["audio"] = audio
    return out


def bench_vae(
    joint: str,
    table: Path,
    noisy: Path,
    shapes: Path,
    work: Path,
    judges: dict[str, Path],
    epochs: int | None,
    samples: int,
    overrides: dict[str, Any],
    tag: str = "",
) -> dict[str, Any]:
    import polyfuse as pf
    from polyfuse.evaluation.generation import (
        anomaly_auc,
        as_files,
        cross_coherence,
        frechet_distance,
        joint_coherence,
        judge_features,
    )
    from polyfuse.generation import image_grid, write_generated

    def choose(raw: dict[str, Any]) -> None:
        raw["objectives"][0]["options"].update(joint=joint, **overrides)

    run, seconds = init_and_train(table, work, f"vae-{joint}{tag}", ["--objective", "vae"], choose, epochs)
    model = pf.load(run / "model")
    judge = {name: pf.load(path) for name, path in judges.items()}
    frame = pd.read_csv(table)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    base = table.parent
    labels = [str(v) for v in test["label"]]
    rate = model.preprocessor.state.config.audio.sample_rate
    options = yaml.safe_load((run / "model" / "config.yaml").read_text())["objectives"][0]["options"]
    out: dict[str, Any] = {
        "epochs": json.loads((run / "metrics.json").read_text())["training"]["epochs"],
        "options": options,
        "train_seconds": round(seconds, 1),
        "test_rows": len(test),
    }
    out["metrics"] = json.loads((run / "metrics.json").read_text())["test"]["vae"]

    a2i, images = cross_coherence(model, test, "audio", "image", judge["image"], labels, base)
    i2a, clips = cross_coherence(model, test, "image", "audio", judge["audio"], labels, base)
    out["coherence_audio_to_image"] = round(a2i, 4)
    out["coherence_image_to_audio"] = round(i2a, 4)
    a2i_mean, _ = cross_coherence(
        model, test, "audio", "image", judge["image"], labels, base, temperature=0.0
    )
    out["coherence_audio_to_image_at_posterior_mean"] = round(a2i_mean, 4)
    tolerant = judge.pop("image_blur_tolerant")
    for temperature, key in ((1.0, ""), (0.0, "_at_posterior_mean")):
        agreed, _ = cross_coherence(
            model, test, "audio", "image", tolerant, labels, base, temperature=temperature
        )
        out[f"coherence_audio_to_image{key}_blur_tolerant_judge"] = round(agreed, 4)
    joint_rate, prior = joint_coherence(model, judge, samples)
    out["joint_coherence"] = round(joint_rate, 4)
    tolerant_rate, _ = joint_coherence(model, {**judge, "image": tolerant}, samples)
    out["joint_coherence_blur_tolerant_judge"] = round(tolerant_rate, 4)
    objective = model.model.objective("vae")
    if objective.prior_fitted:  # the same model with unconditional draws from N(0, I) instead
        fitted = objective.prior_weights.clone()
        objective.prior_weights.fill_(float("nan"))
        standard, standard_prior = joint_coherence(model, judge, samples)
        objective.prior_weights.copy_(fitted)
        out["joint_coherence_standard_normal_prior"] = round(standard, 4)
        SAMPLES.mkdir(parents=True, exist_ok=True)
        image_grid(standard_prior["image"][:64], columns=8, scale=2).save(
            SAMPLES / f"{joint}{tag}_unconditional_standard_normal_prior.png"
        )

    if objective.cross_priors:  # the same model generating from the source's own posterior instead
        cross_priors = objective.cross_priors
        objective.cross_priors = type(cross_priors)()
        own, own_images = cross_coherence(model, test, "audio", "image", judge["image"], labels, base)
        own_tolerant, _ = cross_coherence(model, test, "audio", "image", tolerant, labels, base)
        own_audio, _ = cross_coherence(model, test, "image", "audio", judge["audio"], labels, base)
        objective.cross_priors = cross_priors
        out["without_cross_prior"] = {
            "coherence_audio_to_image": round(own, 4),
            "coherence_audio_to_image_blur_tolerant_judge": round(own_tolerant, 4),
            "coherence_image_to_audio": round(own_audio, 4),
        }
        SAMPLES.mkdir(parents=True, exist_ok=True)
        picked_own = test.groupby("label", sort=True).head(2).index.tolist()
        image_grid([own_images[i] for i in picked_own], columns=len(picked_own), scale=2).save(
            SAMPLES / f"{joint}{tag}_audio_to_image_without_cross_prior.png"
        )

    real_images = judge_features(judge["image"], "image", test["image"].tolist(), base)
    fake_images = judge_features(
        judge["image"], "image", as_files(images, model.preprocessor.inputs["image"], rate)
    )
    prior_images = judge_features(
        judge["image"], "image", as_files(prior["image"], model.preprocessor.inputs["image"], rate)
    )
    out["frechet_image_judge_space"] = {
        "audio_to_image": round(frechet_distance(real_images, fake_images), 4),
        "unconditional": round(frechet_distance(real_images, prior_images), 4),
    }
    real_audio = judge_features(judge["audio"], "audio", test["audio"].tolist(), base)
    fake_audio = judge_features(
        judge["audio"], "audio", as_files(clips, model.preprocessor.inputs["audio"], rate)
    )
    out["frechet_audio_judge_space"] = {"image_to_audio": round(frechet_distance(real_audio, fake_audio), 4)}

    noisy_frame = pd.read_csv(noisy)
    noisy_test = noisy_frame[noisy_frame["split"] == "test"].reset_index(drop=True)
    shape_images = pd.read_csv(shapes)[["image"]].head(len(test))
    out["anomaly_roc_auc"] = {
        "av_digits_n": round(anomaly_auc(model, test, noisy_test, base, noisy.parent), 4),
        "audio_of_another_digit": round(anomaly_auc(model, test, mismatched(test), base), 4),
        "non_mnist_images": round(anomaly_auc(model, test[["image"]], shape_images, base, shapes.parent), 4),
    }

    SAMPLES.mkdir(parents=True, exist_ok=True)
    first = test.groupby("label", sort=True).head(2)  # two rows of each digit (the test split is sorted)
    picked = first.index.tolist()
    from PIL import Image

    real = [Image.open(base / p).convert("L") for p in first["image"]]
    image_grid(real + [images[i] for i in picked], columns=len(picked), scale=2).save(
        SAMPLES / f"{joint}{tag}_audio_to_image.png"
    )
    image_grid(prior["image"][:64], columns=8, scale=2).save(SAMPLES / f"{joint}{tag}_unconditional.png")
    for i in picked[::8][:3]:  # digits 0, 4 and 8
        write_generated(
            SAMPLES / f"{joint}{tag}_image_to_audio_{i}_digit{labels[i]}.wav",
            [clips[i]],
            model.preprocessor.inputs["audio"],
            rate,
        )
    for i in range(2):
        write_generated(
            SAMPLES / f"{joint}{tag}_unconditional_{i}.wav",
            [prior["audio"][i]],
            model.preprocessor.inputs["audio"],
            rate,
        )
    return out


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "generation.json"
    if previous.exists():  # another run (--joints, --tag) may have written its joints since we started:
        # keep theirs as they are now, ours over them (`results` holds only this run's joints)
        results = {**results, "vae": json.loads(previous.read_text()).get("vae", {}) | results["vae"]}
    atomic_write_text(RESULTS / "generation.json", json.dumps(results, indent=2))
    lines = [
        "# Multimodal VAEs on AV-Digits",
        "",
        f"Machine: {results['machine']}; epochs per joint in the table",
        "",
    ]
    lines.append(
        "| joint | epochs | audio→image (sampled / posterior mean) | same, blur-tolerant image judge | "
        "image→audio | joint coherence (blur-tolerant image judge) [N(0, I) prior] | ROC-AUC noisy | ROC-AUC mismatched | "
        "ROC-AUC non-MNIST | train s |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for joint, r in results.get("vae", {}).items():
        auc = r["anomaly_roc_auc"]
        tolerant = (
            f"{r['coherence_audio_to_image_blur_tolerant_judge']} / "
            f"{r['coherence_audio_to_image_at_posterior_mean_blur_tolerant_judge']}"
            if "coherence_audio_to_image_blur_tolerant_judge" in r
            else "-"
        )
        lines.append(
            f"| {joint} | {r.get('epochs', '')} | {r['coherence_audio_to_image']} / "
            f"{r.get('coherence_audio_to_image_at_posterior_mean', '-')} | {tolerant} | "
            f"{r['coherence_image_to_audio']} | {r['joint_coherence']} "
            f"({r.get('joint_coherence_blur_tolerant_judge', '-')}) "
            f"[{r.get('joint_coherence_standard_normal_prior', '-')}] | "
            f"{auc['av_digits_n']} | {auc['audio_of_another_digit']} | {auc['non_mnist_images']} | "
            f"{r['train_seconds']} |"
        )
    own = {
        joint: r["without_cross_prior"]
        for joint, r in results.get("vae", {}).items()
        if "without_cross_prior" in r
    }
    if own:
        lines += [
            "",
            "The same models generating from the source's own posterior instead of the cross prior "
            "(audio→image sampled, sharp / blur-tolerant judge; image→audio):",
            "",
            "| joint | audio→image | blur-tolerant | image→audio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {joint} | {o['coherence_audio_to_image']} | {o['coherence_audio_to_image_blur_tolerant_judge']} | "
            f"{o['coherence_image_to_audio']} |"
            for joint, o in own.items()
        ]
    judges = results["judges"]
    lines += [
        "",
        "Judges, trained separately on real data (test accuracy on AV-Digits' test rows): image "
        f"{judges['image']:.4f} (MNIST images AV-Digits does not test on), blur-tolerant image "
        f"{judges.get('image_blur_tolerant', float('nan')):.4f} (the same plus a blurred, dimmed copy of each), "
        f"audio {judges['audio']:.4f} (AV-Digits' training clips); chance is 0.1.",
        "train s is wall time with other jobs running on the box (one core's share or less per run).",
        "Fréchet distances are in the judges' feature spaces (no Inception weights offline): see the JSON.",
    ]
    atomic_write_text(RESULTS / "generation.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--joints", nargs="+", default=["poe", "moe", "mopoe"])
    parser.add_argument("--epochs", type=int, default=None, help="vae epochs (default: init's, 60)")
    parser.add_argument("--judge-epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=500, help="unconditional samples for joint coherence")
    parser.add_argument(
        "--vae-option",
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="override one of init's vae options, e.g. likelihood_weights={audio: 0.3} (repeatable)",
    )
    parser.add_argument("--tag", default="", help="suffix of the joints' names in the results and files")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    data = args.data or default_data_dir()
    work = args.work or Path(tempfile.mkdtemp(prefix="polyfuse-generation-"))
    work.mkdir(parents=True, exist_ok=True)
    table = (
        build_av_digits(work / "av", data)
        if not (work / "av" / "av_digits.csv").exists()
        else work / "av" / "av_digits.csv"
    )
    noisy = (
        build_av_digits(work / "av-noisy", data, variant="noisy")
        if not (work / "av-noisy" / "av_digits.csv").exists()
        else work / "av-noisy" / "av_digits.csv"
    )
    shapes = make_synthetic_table(work / "shapes", n_rows=600, seed=0, missing_rate=0.0)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    results: dict[str, Any] = {"machine": machine, "epochs": args.epochs, "vae": {}}
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.vae_option)}
    judges = train_judges(table, work, args.judge_epochs, data)
    results["judges"] = {
        name: json.loads((path / "metrics.json").read_text())["test"]["label"]["accuracy"]
        for name, path in judges.items()
    }
    write(results)
    for joint in args.joints:
        print(f"vae {joint} ...", flush=True)
        key = f"{joint}{args.tag}"
        results["vae"][key] = bench_vae(
            joint, table, noisy, shapes, work, judges, args.epochs, args.samples, overrides, args.tag
        )
        write(results)
        print(json.dumps(results["vae"][key], indent=2), flush=True)


if __name__ == "__main__":
    main()
