"""Retrieval metrics: each query ranks the whole gallery by cosine similarity.

A gallery item is relevant to a query when it is the same row (instance level: query i ↔ gallery i) or,
given labels, when it has the query's label (class level). For Q queries and G gallery items:

    recall@k     share of queries with at least one relevant item in the top k
    median_rank  median over queries of the 1-based rank of the first relevant item
    mAP          mean over queries of average precision over all relevant items

Queries are scored in blocks, so a 100k-row split never builds the whole (Q, G) matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 1024


def retrieval_metrics(
    queries: Tensor, gallery: Tensor, labels: Tensor | None = None, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float | int]:
    """queries (N, E) and gallery (N, E), row i of each from the same table row; labels (N,) or None."""
    n = queries.shape[0]
    if n == 0:
        return {"queries": 0}
    first_ranks: list[Tensor] = []
    precisions: list[Tensor] = []
    gallery = gallery.float()
    for start in range(0, n, BLOCK):
        block = queries[start : start + BLOCK].float()
        rows = torch.arange(start, start + block.shape[0])
        similarity = block @ gallery.T  # (b, G)
        order = similarity.argsort(dim=1, descending=True)  # (b, G) gallery ids, best first
        # (b, G) in rank order: the query's own row, or any row with its label
        relevant = order == rows[:, None] if labels is None else labels[order] == labels[rows][:, None]
        first_ranks.append(relevant.float().argmax(dim=1) + 1)  # every query has ≥ 1 relevant item
        hits = relevant.float().cumsum(dim=1)  # (b, G)
        ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float32)
        precision_at_hits = (hits / ranks) * relevant
        precisions.append(precision_at_hits.sum(1) / relevant.sum(1).clamp(min=1))
    first = torch.cat(first_ranks)  # (N,)
    metrics: dict[str, float | int] = {"queries": n}
    for k in ks:
        metrics[f"recall@{k}"] = float((first <= k).float().mean())
    metrics["median_rank"] = float(first.float().quantile(0.5))
    metrics["mAP"] = float(torch.cat(precisions).mean())
    return metrics
