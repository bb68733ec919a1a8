"""Exact vs FAISS search over synthetic 256-d vectors: build rows/s, query latency p50/p99, recall@10.

    .venv/bin/python bench/retrieval.py                    # 10k, 100k and 1M vectors
    .venv/bin/python bench/retrieval.py --sizes 10000      # one size

The vectors are clustered (1,000 Gaussian centres, then L2-normalised) so that nearest neighbours mean
something, as they do for real embeddings; queries are fresh draws from the same mixture. Each collection
goes through the code `polyfuse index build` uses (`build_index` writes vectors.npy, rows.npy and the FAISS
index; `Index.load` memory-maps them), so "build" includes writing the files. Exact search is the
baseline of every ratio; recall@10 of FAISS is measured against it on the same queries. Results go to
bench/results/retrieval.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from polyfuse.atomic import atomic_write_text
from polyfuse.retrieval.index import Index, build_index, exact_top_k, faiss_available

RESULTS = Path(__file__).parent / "results"
DIM = 256


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    picks = rng.integers(0, len(centres), n)
    vectors = centres[picks] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def latencies(search: Any, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    """Per-query seconds (one query at a time, as a server sees them) and the ids found."""
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = search(q[None, :], k)
        times.append(time.perf_counter() - start)
        found.append(ids[0])
    return times, np.stack(found)


def one_size(n: int, work: Path, queries: int, kind: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    vectors = clustered(n, rng, centres)
    probes = clustered(queries, rng, centres)
    chunk = 100_000

    def embed_chunk(rows: list[int]) -> dict[str, np.ndarray]:
        return {"vec": vectors[rows[0] : rows[-1] + 1]}

    result: dict[str, Any] = {"vectors": n, "dim": DIM, "queries": queries}
    for label, faiss in (("exact", "off"), (kind, kind)):
        if faiss != "off" and not faiss_available():
            result[label] = "faiss-cpu not installed"
            continue
        out = work / f"{n}-{label}"
        start = time.perf_counter()
        build_index(
            out, embed_chunk, list(range(n)), ["vec"], {"bench": n}, chunk_rows=chunk, faiss=faiss, log=print
        )  # type: ignore[arg-type]
        build_seconds = time.perf_counter() - start
        collection = Index.load(out).collections["vec"]
        times, found = latencies(collection.search, probes, 10)
        result[label] = {
            "build_seconds": round(build_seconds, 2),
            "build_rows_per_second": round(n / build_seconds, 1),
            "query_p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
            "query_p99_ms": round(1000 * float(np.percentile(times, 99)), 3),
            "found": found,
        }
    exact_ids = exact_top_k(vectors, probes, 10)[1]
    for label in ("exact", kind):
        entry = result.get(label)
        if isinstance(entry, dict):
            ids = entry.pop("found")
            hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(ids, exact_ids, strict=True))
            entry["recall_at_10_vs_exact"] = round(hits / exact_ids.size, 4)
    if isinstance(result.get(kind), dict):
        result["p50_speedup_vs_exact"] = round(
            result["exact"]["query_p50_ms"] / result[kind]["query_p50_ms"], 1
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--faiss", choices=["ivf", "hnsw"], default="ivf")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="polyfuse-retrieval-") as tmp:
        for n in args.sizes:
            print(f"{n:,} vectors ...", flush=True)
            rows.append(one_size(n, Path(tmp), args.queries, args.faiss))
            print(json.dumps(rows[-1]), flush=True)
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "runs": rows}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "retrieval.json", json.dumps(results, indent=2))
    lines = [
        "# Retrieval: exact vs FAISS (256-d, clustered synthetic vectors, one query at a time)",
        "",
        "| vectors | index | build rows/s | p50 ms | p99 ms | recall@10 vs exact |",
        "|---|---|---|---|---|---|",
    ]
    for run in rows:
        for label in ("exact", args.faiss):
            entry = run[label]
            if isinstance(entry, dict):
                lines.append(
                    f"| {run['vectors']:,} | {label} | {entry['build_rows_per_second']:,} | {entry['query_p50_ms']} "
                    f"| {entry['query_p99_ms']} | {entry['recall_at_10_vs_exact']} |"
                )
    atomic_write_text(RESULTS / "retrieval.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
