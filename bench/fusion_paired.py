"""Paired test of the fusion sweep: does a fused model get right the test rows a single-modality model gets
wrong, more often than the reverse? Reads the models that `bench/fusion.py --work DIR` kept.

    .venv/bin/python bench/fusion_paired.py --work /tmp/bw-noisy --variant noisy

Accuracy means over 3 seeds of 300 test rows cannot tell a 1-point gain from luck; this compares the
same rows. For each fusion and each single modality, over the seeds both have: rows only the fused
model gets right (wins), rows only the single model gets right (losses), and McNemar's exact two-sided
p-value (a binomial test of wins among wins + losses). Writes bench/results/fusion_<variant>_paired.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

import polyfuse
from polyfuse.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
RUN = re.compile(r"^(fused|image|audio)-(\w+)-seed(\d+)$")


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: P(a split at least this uneven | each discordant row is a coin flip)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def correct_rows(model_dir: Path, table: Path) -> pd.Series:
    """Per test row id: whether the model predicts its label."""
    frame = pd.read_csv(table)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    predicted = polyfuse.load(model_dir).predict(test, base_dir=table.parent)["label"].astype(str)
    return pd.Series((predicted == test["label"].astype(str)).to_numpy(), index=test["id"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of bench/fusion.py")
    parser.add_argument("--variant", choices=["clean", "noisy"], default="noisy")
    args = parser.parse_args()

    table = next((args.work / f"av-digits-{args.variant}").glob("*.csv"))
    correct: dict[tuple[str, str, int], pd.Series] = {}
    for run in sorted(p for p in args.work.iterdir() if (p / "model" / "model.safetensors").exists()):
        match = RUN.match(run.name)
        if match:
            inputs, fusion, seed = match.group(1), match.group(2), int(match.group(3))
            correct[(inputs, fusion if inputs == "fused" else "-", seed)] = correct_rows(run / "model", table)
            print(
                run.name,
                f"{correct[(inputs, fusion if inputs == 'fused' else '-', seed)].mean():.4f}",
                flush=True,
            )

    rows = []
    for fusion in sorted({f for i, f, _ in correct if i == "fused"}):
        for single in ("audio", "image"):
            seeds = sorted(
                s for i, f, s in correct if i == "fused" and f == fusion and (single, "-", s) in correct
            )
            if not seeds:
                continue
            wins = sum(int((correct[("fused", fusion, s)] & ~correct[(single, "-", s)]).sum()) for s in seeds)
            losses = sum(
                int((~correct[("fused", fusion, s)] & correct[(single, "-", s)]).sum()) for s in seeds
            )
            errors_fused = sum(int((~correct[("fused", fusion, s)]).sum()) for s in seeds)
            errors_single = sum(int((~correct[(single, "-", s)]).sum()) for s in seeds)
            rows.append(
                {
                    "fusion": fusion,
                    "against": f"{single} only",
                    "seeds": len(seeds),
                    "test rows x seeds": len(seeds) * len(correct[("fused", fusion, seeds[0])]),
                    "errors fused": errors_fused,
                    "errors single": errors_single,
                    "fused wins": wins,
                    "fused losses": losses,
                    "McNemar p": float(f"{mcnemar_exact(wins, losses):.2g}"),
                }
            )
    if not rows:
        raise SystemExit(
            f"{args.work}: no fused run has a single-modality run of the same seed to compare with"
        )
    frame = pd.DataFrame(rows)
    out = RESULTS / f"fusion_{args.variant}_paired"
    atomic_write_text(
        out.with_suffix(".json"), json.dumps({"variant": args.variant, "pairs": rows}, indent=2)
    )
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in frame.itertuples(index=False)]
    header = f"AV-Digits ({args.variant}): fused vs single-modality models on the same test rows, pooled over seeds.\n\n"
    atomic_write_text(out.with_suffix(".md"), header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
