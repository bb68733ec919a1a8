"""Robustness curves of the fused model against a late-fusion baseline trained in the same run. Reads the
models that `bench/fusion.py --work DIR` kept (or runs after it with `bench/fusion.py --robustness`).

    .venv/bin/python bench/fusion_robustness.py --work /tmp/bw-noisy --variant noisy

The late-fusion baseline is the image-only and the audio-only model of the same seed, their class
probabilities averaged (`polyfuse.evaluation.late_fusion.LateFusionEnsemble`; a row without an input
leaves that model's vote out). For each seed and fusion, both get `robustness_curves` on the test split:
test accuracy over severities 0, 0.1, …, 1 per input and noise family, and the area under each curve.
The noise is seeded per (seed, input, family, level), so both models score exactly the same degraded
rows. Writes bench/results/fusion_<variant>_robustness.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import polyfuse
from polyfuse.atomic import atomic_write_text
from polyfuse.commands import split_positions
from polyfuse.evaluation.late_fusion import LateFusionEnsemble
from polyfuse.evaluation.robustness import SEVERITIES, robustness_curves

RESULTS = Path(__file__).parent / "results"
FUSED = re.compile(r"^fused-(\w+)-seed(\d+)$")
MODELS = ("fused", "late")


def rounded(curves: dict[str, Any]) -> dict[str, Any]:
    """{input: {family: {"values", "auc"}}} with 4 decimals."""
    return {
        name: {
            f: {"values": [round(v, 4) for v in c["values"]], "auc": round(c["auc"], 4)}
            for f, c in fams.items()
        }
        for name, fams in curves["curves"].items()
    }


def seed_curves(work: Path, table_path: Path, fusion: str, seed: int) -> dict[str, Any]:
    """Both models' curves on the test split of one seed's runs."""
    fused = polyfuse.load(work / f"fused-{fusion}-seed{seed}" / "model")
    members = [polyfuse.load(work / f"{single}-gated-seed{seed}" / "model") for single in ("image", "audio")]
    late = LateFusionEnsemble(members)
    table, positions = split_positions(fused, table_path, "test")
    test = table.subset(positions)
    trained = {
        name: json.loads((work / f"{name}-seed{seed}" / "metrics.json").read_text())["training"]["epochs"]
        for name in (f"fused-{fusion}", "image-gated", "audio-gated")
    }
    out: dict[str, Any] = {"fusion": fusion, "seed": seed, "test_rows": len(test), "epochs_trained": trained}
    for key, scorer in (("fused", fused), ("late", late)):
        start = time.perf_counter()
        curves = robustness_curves(scorer, test, "label", seed=seed)
        out[key] = {"clean": round(curves["clean"], 4), "curves": rounded(curves)}
        out[f"{key}_seconds"] = round(time.perf_counter() - start, 1)
        print(
            f"{fusion} seed {seed} {key}: clean {curves['clean']:.4f}, {out[f'{key}_seconds']} s", flush=True
        )
    return out


def runs_with_baseline(work: Path) -> list[tuple[str, int]]:
    """(fusion, seed) of every fused run whose seed also has an image-only and an audio-only model."""
    found = []
    for run in sorted(work.iterdir()):
        match = FUSED.match(run.name)
        singles = [work / f"{s}-gated-seed{match.group(2)}" for s in ("image", "audio")] if match else []
        if match and all((p / "model" / "model.safetensors").exists() for p in [run, *singles]):
            found.append((match.group(1), int(match.group(2))))
    return found


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    severities = results["severities"]
    lines = [
        f"AV-Digits ({results['variant']}), test split, {results['metric']} over severities 0…1; area under "
        "each curve (1.0 = unaffected). fused = the fused model; late = mean of the image-only and "
        "audio-only models' probabilities (same seed, same run).\n",
        "| fusion | input | noise | fused area | late area | fused − late | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for fusion in sorted({r["fusion"] for r in runs}):
        mine = [r for r in runs if r["fusion"] == fusion]
        for name, families in mine[0]["fused"]["curves"].items():
            for family in families:
                areas = {m: [r[m]["curves"][name][family]["auc"] for r in mine] for m in MODELS}
                gap = [f - late for f, late in zip(areas["fused"], areas["late"], strict=True)]
                cells = [fusion, name, family, *(mean_std(areas[m]) for m in MODELS), mean_std(gap)]
                lines.append("| " + " | ".join(cells) + f" | {len(mine)} |")
    for run in runs:
        lines += [
            f"\n{run['fusion']}, seed {run['seed']} ({run['test_rows']} test rows; epochs trained "
            f"{run['epochs_trained']}; clean accuracy fused {run['fused']['clean']}, late "
            f"{run['late']['clean']}):\n",
            "| input | noise | model | " + " | ".join(f"s={s}" for s in severities) + " | area |",
            "|---|---|---|" + "---|" * (len(severities) + 1),
        ]
        for name, families in run["fused"]["curves"].items():
            for family in families:
                for model in MODELS:
                    curve = run[model]["curves"][name][family]
                    values = " | ".join(f"{v:.3f}" for v in curve["values"])
                    lines.append(f"| {name} | {family} | {model} | {values} | {curve['auc']:.3f} |")
    return "\n".join(lines) + "\n"


def write_robustness(
    work: Path,
    table_path: Path,
    variant: str,
    *,
    fusions: list[str] | None = None,
    seeds: list[int] | None = None,
) -> Path:
    """Curves for every fused run in `work` (of the given fusions and seeds) with its seed's single-input
    models; returns the .md path."""
    plan = [
        (fusion, seed)
        for fusion, seed in runs_with_baseline(work)
        if (fusions is None or fusion in fusions) and (seeds is None or seed in seeds)
    ]
    if not plan:
        named = {"fusions": fusions, "seeds": seeds}
        wanted = ", ".join(f"{k} {v}" for k, v in named.items() if v is not None)
        which = f" ({wanted})" if wanted else ""
        raise SystemExit(
            f"no fused run{which} in {work} has image-only and audio-only models of the same seed; "
            "train them with bench/fusion.py --work DIR (its --single runs, on by default)"
        )
    results: dict[str, Any] = {
        "variant": variant,
        "metric": "accuracy",
        "severities": list(SEVERITIES),
        "runs": [],
    }
    for fusion, seed in plan:
        results["runs"].append(seed_curves(work, table_path, fusion, seed))
        RESULTS.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULTS / f"fusion_{variant}_robustness.json", json.dumps(results, indent=2))
        atomic_write_text(RESULTS / f"fusion_{variant}_robustness.md", markdown(results))
    return RESULTS / f"fusion_{variant}_robustness.md"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", choices=["clean", "noisy"], default="noisy")
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of bench/fusion.py")
    parser.add_argument("--fusions", nargs="+", default=None, help="only these fused runs (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds (default: all)")
    args = parser.parse_args()
    table = next((args.work / f"av-digits-{args.variant}").glob("*.csv"))
    done = write_robustness(args.work, table, args.variant, fusions=args.fusions, seeds=args.seeds)
    print(done.read_text())


if __name__ == "__main__":
    main()
