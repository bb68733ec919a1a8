"""Data pipeline throughput on AV-Digits: first pass (decode + features) against a cached pass.

    .venv/bin/python bench/data_pipeline.py    # builds AV-Digits from $POLYFUSE_DATA or ../shared/data

Writes bench/results/data_pipeline.json. Every pass runs in this process (the first pass's decode workers
are its children), one after the other, over the same rows with the same preprocessing; the ratios are
the figures to compare across machines:

- cached_over_first_ratio: the median of 3 first passes with the default decode workers (one per usable
  core), each filling an empty store, against the median of 3 passes over the last store filled (a single
  pass of ~0.2 s moves by a third when the box hiccups);
- first_pass_two_over_one_ratio: the first pass on 2 decode processes against 1 (each on an empty store);
- cached_epoch_rows_per_s: the DataLoader epoch alone over cached features (what each training epoch
  after the first costs), median of the 3 cached passes.

Each pass's epoch runs with the objects that existed before it frozen for the garbage collector, as
`polyfuse train` runs its epochs (polyfuse.gc_freeze): otherwise a full collection walking the earlier
passes' objects lands in some epochs and not others.

The table's files are left to age past the store's 2 s racy window before the first pass (as any table
that was not written a moment ago): a file written less than 2 s before it is read is read again next
time, which would make the cached pass re-read files no real table would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from polyfuse.data.cache import RACY_NS
from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.datasets import build_av_digits, default_data_dir
from polyfuse.data.decode_pool import usable_cores
from polyfuse.data.prepare import DataConfig, prepare_data
from polyfuse.data.splits import SplitConfig
from polyfuse.gc_freeze import long_lived_objects_frozen
from polyfuse.presets import av_digits_preprocessing

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"


def one_pass(config: DataConfig, batch_size: int) -> tuple[float, float, int]:
    """Seconds to validate + featurise every row and collate them into batches, and of that the epoch."""
    start = time.perf_counter()
    prepared = prepare_data(config, show_progress=False)
    epoch_start = time.perf_counter()
    dataset = MultimodalDataset(prepared.table, prepared.preprocessor)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=make_collate(prepared.preprocessor))
    with long_lived_objects_frozen():
        rows = sum(len(batch) for batch in loader)
    end = time.perf_counter()
    return end - start, end - epoch_start, rows


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
        time.sleep(RACY_NS / 1e9 + 0.1)
        config = DataConfig(
            table=table,
            targets={"label": "classification"},
            split=SplitConfig(strategy="column"),
            preprocessing=av_digits_preprocessing(),
            cache_dir=Path(tmp) / "cache",
        )
        one_process_s, _, rows = one_pass(
            config.model_copy(update={"workers": 1, "cache_dir": Path(tmp) / "cache-1"}), args.batch_size
        )
        two_process_s, _, _ = one_pass(
            config.model_copy(update={"workers": 2, "cache_dir": Path(tmp) / "cache-2"}), args.batch_size
        )
        # Validation decodes every row once and then the dataset pass reads them: the first run's cache
        # misses all happen in validation, the dataset pass already hits.
        workers = usable_cores()
        firsts = [
            one_pass(
                config.model_copy(update={"cache_dir": Path(tmp) / f"cache-first-{i}"}), args.batch_size
            )[0]
            for i in range(3)
        ]
        last_filled = config.model_copy(update={"cache_dir": Path(tmp) / "cache-first-2"})
        cached = [one_pass(last_filled, args.batch_size) for _ in range(3)]
        first_s = statistics.median(firsts)
        cached_s = statistics.median(c[0] for c in cached)
        cached_epoch_s = statistics.median(c[1] for c in cached)
        uncached = config.model_copy(update={"use_cache": False})
        nocache_s, _, _ = one_pass(uncached, args.batch_size)
    result = {
        "rows": rows,
        "decode_workers": workers,
        "first_pass_rows_per_s": round(rows / first_s, 1),
        "cached_pass_rows_per_s": round(rows / cached_s, 1),
        "cached_epoch_rows_per_s": round(rows / cached_epoch_s, 1),
        "no_cache_pass_rows_per_s": round(rows / nocache_s, 1),
        "cached_over_first_ratio": round(first_s / cached_s, 2),
        "cached_over_no_cache_ratio": round(nocache_s / cached_s, 2),
        "first_passes_s": [round(t, 3) for t in firsts],
        "cached_passes_s": [round(c[0], 3) for c in cached],
        "first_pass_1_process_rows_per_s": round(rows / one_process_s, 1),
        "first_pass_2_processes_rows_per_s": round(rows / two_process_s, 1),
        "first_pass_two_over_one_ratio": round(one_process_s / two_process_s, 2),
        "what_a_pass_does": "validate every row (decode + features on the decode workers, filling the "
        f"feature store) + one DataLoader epoch collating batches of {args.batch_size}",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
