"""A vector index over a table: one collection of embeddings per aligned input, searched by cosine.

    INDEX_DIR/
      index.json              model and table it was built from, and per input: rows, dim, kind, recall
      <input>/vectors.npy     float32 (N, E), L2-normalised; memory-mapped when searched
      <input>/rows.npy        int64 (N,) position of each vector's row in the table
      <input>/faiss.index     only for large collections with faiss-cpu installed (IVF or HNSW)
      parts/                  chunk files while a build runs; a rerun skips the chunks already written

Exact search (the default) is a blocked matrix product and a top-k; it needs nothing beyond numpy. With
`faiss-cpu` installed (`pip install polyfuse[faiss]`) and a collection of at least `faiss_min_rows`
vectors, an approximate index is built as well, and its recall@10 against exact search is measured on
a sample of the collection at build time and stored in index.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polyfuse.atomic import atomic_write_text
from polyfuse.data.errors import DataError, Problem

FORMAT = "polyfuse-index"
FORMAT_VERSION = 1
EXACT_BLOCK = 65_536  # gallery rows per matrix product in exact search (256 MB of float32 at E=1024)
RECALL_QUERIES = 200
FaissKind = Literal["auto", "ivf", "hnsw", "off"]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of each query (Q, E) over gallery (N, E), both L2-normalised, in blocks of the gallery
    (a memory-mapped gallery is read once per call). Returns scores (Q, k') and ids (Q, k'), k' = min(k, N)."""
    n = gallery.shape[0]
    k = min(k, n)
    best_scores = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, n, EXACT_BLOCK):
        block = np.asarray(gallery[start : start + EXACT_BLOCK], dtype=np.float32)
        scores = queries.astype(np.float32) @ block.T  # (Q, b)
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, 1)
        best_ids = np.take_along_axis(best_ids, keep, 1)
    return best_scores, best_ids


def build_faiss(vectors: np.ndarray, kind: Literal["ivf", "hnsw"]) -> Any:
    """An inner-product FAISS index over L2-normalised vectors (cosine): IVF-Flat with about √N·4 lists
    (probing 1/16 of them), or HNSW with 32 links per node."""
    import faiss

    dim = vectors.shape[1]
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    else:
        # √N·4 lists, but no more than k-means can place with ≥ 39 points each (faiss's own minimum)
        lists = max(1, min(int(4 * np.sqrt(len(data))), len(data) // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = data[np.random.default_rng(0).choice(len(data), min(len(data), lists * 64), replace=False)]
        index.train(sample)
        index.nprobe = max(1, lists // 16)
    index.add(data)
    return index


def faiss_recall(index: Any, vectors: np.ndarray, k: int = 10, queries: int = RECALL_QUERIES) -> float:
    """Recall@k of `index` against exact search, over a fixed sample of the collection as queries."""
    rng = np.random.default_rng(0)
    sample = np.asarray(vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)])
    _, exact = exact_top_k(vectors, sample, k)
    _, approximate = index.search(np.ascontiguousarray(sample, dtype=np.float32), k)
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


@dataclass
class Collection:
    """The vectors of one input: (N, E) memory-mapped, their table rows, and an optional FAISS index."""

    input: str
    vectors: np.ndarray
    rows: np.ndarray
    faiss_index: Any = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """scores (Q, k) and table rows (Q, k) of the nearest vectors, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.faiss_index is not None:
            scores, ids = self.faiss_index.search(queries, min(k, len(self.rows)))
        else:
            scores, ids = exact_top_k(self.vectors, queries, k)
        return scores, self.rows[ids]


class Index:
    """A built index: `Index.load(dir).search(vectors, input="image", k=10)`."""

    def __init__(self, directory: Path, info: dict[str, Any], collections: dict[str, Collection]) -> None:
        self.directory = directory
        self.info = info
        self.collections = collections

    @property
    def model_dir(self) -> Path:
        return Path(self.info["model"])

    @property
    def table(self) -> Path:
        return Path(self.info["table"])

    @classmethod
    def load(cls, directory: Path | str, use_faiss: bool = True) -> Index:
        directory = Path(directory)
        path = directory / "index.json"
        if not path.exists():
            raise DataError(
                [
                    Problem(
                        "not a finished polyfuse index (no index.json)",
                        file=str(directory),
                        fix="build it with `polyfuse index build MODEL_DIR TABLE -o DIR` (a rerun resumes)",
                    )
                ]
            )
        info = json.loads(path.read_text())
        if info.get("format") != FORMAT or info.get("format_version", 0) > FORMAT_VERSION:
            raise DataError([Problem("unknown index format", file=str(path))])
        collections = {}
        for name, meta in info["inputs"].items():
            folder = directory / meta["folder"]
            faiss_index: Any = None
            if use_faiss and meta.get("kind", "exact") != "exact" and faiss_available():
                import faiss

                faiss_index = faiss.read_index(str(folder / "faiss.index"))
                if meta["kind"] == "ivf":
                    faiss_index.nprobe = meta["nprobe"]
            collections[name] = Collection(
                name,
                np.load(folder / "vectors.npy", mmap_mode="r"),
                np.load(folder / "rows.npy"),
                faiss_index,
            )
        return cls(directory, info, collections)

    def search(self, queries: np.ndarray, input: str, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        if input not in self.collections:
            raise DataError(f"the index holds no '{input}' vectors; it holds {sorted(self.collections)}")
        return self.collections[input].search(queries, k)


EmbedChunk = Callable[[list[int]], dict[str, np.ndarray]]


def build_index(
    out: Path,
    embed_chunk: EmbedChunk,
    table_rows: list[int],
    inputs: list[str],
    source: dict[str, Any],
    *,
    chunk_rows: int = 2048,
    faiss: FaissKind = "auto",
    faiss_min_rows: int = 50_000,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Embed rows 0..n-1 chunk by chunk (`embed_chunk(rows)` → input → (len(rows), E), NaN rows for rows
    lacking the input), then assemble index.json; `table_rows[i]` is row i's position in the source table
    (what search returns). A chunk file, once written, is never recomputed:
    an interrupted build resumes where it stopped. `source` (model, table, ...) must match the unfinished
    build's, or the build refuses to mix them."""
    started = time.perf_counter()
    n_rows = len(table_rows)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    manifest = {**source, "inputs": inputs, "chunk_rows": chunk_rows, "rows": n_rows}
    manifest_path = parts / "build.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()) != manifest:
        raise DataError(
            [
                Problem(
                    "an unfinished build of another model, table or setting is in this folder",
                    file=str(out),
                    fix="choose another -o folder, or delete this one",
                )
            ]
        )
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    chunks = list(range(0, n_rows, chunk_rows))
    for start in chunks:
        part = parts / f"{start // chunk_rows:06d}.npz"
        rows = list(range(start, min(start + chunk_rows, n_rows)))
        if not part.exists():
            embedded = embed_chunk(rows)
            staging = part.with_suffix(".tmp.npz")
            arrays: dict[str, Any] = {name: embedded[name].astype(np.float32) for name in inputs}
            np.savez(staging, **arrays)
            os.replace(staging, part)
        if progress is not None:
            progress(len(rows))
    embed_seconds = time.perf_counter() - started

    info: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **source, "inputs": {}}
    use_faiss = faiss != "off" and faiss_available()
    if faiss in ("ivf", "hnsw") and not use_faiss:
        raise DataError(f"--faiss {faiss} needs faiss-cpu: pip install 'polyfuse[faiss]'")
    for name in inputs:
        folder = out / _folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        loaded = [np.load(parts / f"{s // chunk_rows:06d}.npz")[name] for s in chunks]
        vectors = np.concatenate(loaded) if loaded else np.zeros((0, 0), np.float32)
        keep = ~np.isnan(vectors).any(axis=1)
        positions = np.asarray(table_rows, dtype=np.int64)[keep]
        vectors = np.ascontiguousarray(vectors[keep])
        _save_npy(folder / "vectors.npy", vectors)
        _save_npy(folder / "rows.npy", positions)
        count = len(positions)
        meta: dict[str, Any] = {"folder": _folder(name), "rows": count, "dim": int(vectors.shape[1])}
        kind = faiss if faiss in ("ivf", "hnsw") else "ivf"
        if use_faiss and count and (faiss in ("ivf", "hnsw") or count >= faiss_min_rows):
            import faiss as faiss_lib

            built = time.perf_counter()
            index = build_faiss(vectors, kind)
            faiss_lib.write_index(index, str(folder / "faiss.index.tmp"))
            os.replace(folder / "faiss.index.tmp", folder / "faiss.index")
            meta.update(
                kind=kind,
                faiss_build_seconds=round(time.perf_counter() - built, 2),
                recall_at_10=round(faiss_recall(index, vectors), 4),
            )
            if kind == "ivf":
                meta["nprobe"] = int(index.nprobe)
            log(
                f"{name}: {kind.upper()} index over {count:,} vectors, recall@10 vs exact {meta['recall_at_10']}"
            )
        else:
            meta["kind"] = "exact"
        info["inputs"][name] = meta
    info["embed_rows_per_second"] = round(n_rows / max(embed_seconds, 1e-9), 1)
    atomic_write_text(out / "index.json", json.dumps(info, indent=2))
    shutil.rmtree(parts, ignore_errors=True)
    return info


def _folder(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


def _save_npy(path: Path, array: np.ndarray) -> None:
    staging = path.with_suffix(".tmp.npy")
    np.save(staging, array)
    os.replace(staging, path)
