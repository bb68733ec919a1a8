"""Data pipeline throughput on AV-Digits: first pass (decode + features) against a cached pass.

    .venv/bin/python bench/data_pipeline.py    # builds AV-Digits from $POLYFUSE_DATA or ../shared/data

Writes bench/results/data_pipeline.json. Both passes run in this process, one after the other, over the
same rows with the same preprocessing; the ratio is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.data.prepare import DataConfig, prepare_data
from polyfuse.data.splits import SplitConfig
from polyfuse.presets import av_digits_preprocessing

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"


def one_pass(config: DataConfig, batch_size: int) -> tuple[float, int]:
    """Seconds to validate + featurise every row and collate them into batches."""
    start = time.perf_counter()
    prepared = prepare_data(config, show_progress=False)
    dataset = MultimodalDataset(prepared.table, prepared.preprocessor)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=make_collate(prepared.preprocessor))
    rows = sum(len(batch) for batch in loader)
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="folder with mnist/ and fsdd/")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        table = build_av_digits(Path(tmp) / "av", args.data or default_data_dir())
        config = DataConfig(
            table=table,
            targets={"label": "classification"},
            split=SplitConfig(strategy="column"),
            preprocessing=av_digits_preprocessing(),
            cache_dir=Path(tmp) / "cache",
        )
        # Validation decodes every row once and then the dataset pass reads them: the first run's cache
        # misses all happen in validation, the dataset pass already hits.
        first_s, rows = one_pass(config, args.batch_size)
        cached_s, _ = one_pass(config, args.batch_size)
        uncached = config.model_copy(update={"use_cache": False})
        nocache_s, _ = one_pass(uncached, args.batch_size)
    result = {
        "rows": rows,
        "first_pass_rows_per_s": round(rows / first_s, 1),
        "cached_pass_rows_per_s": round(rows / cached_s, 1),
        "no_cache_pass_rows_per_s": round(rows / nocache_s, 1),
        "cached_over_first_ratio": round(first_s / cached_s, 2),
        "cached_over_no_cache_ratio": round(nocache_s / cached_s, 2),
        "what_a_pass_does": "validate every row (decode + features, filling the cache) + one DataLoader "
        f"epoch collating batches of {args.batch_size}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
