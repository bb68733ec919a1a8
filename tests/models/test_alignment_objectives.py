"""Contrastive and matching losses, retrieval metrics and exact search, on fixed tensors (golden numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from polyfuse.data.schema import Modality
from polyfuse.evaluation.retrieval import retrieval_metrics
from polyfuse.objectives.base import ObjectiveContext
from polyfuse.objectives.contrastive import info_nce
from polyfuse.objectives.matching import MatchingObjective, choose_partners
from polyfuse.retrieval.index import build_faiss, exact_top_k, faiss_available, faiss_recall


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_info_nce_is_clips_symmetric_cross_entropy() -> None:
    za, zb = _unit(6, 4, 0), _unit(6, 4, 1)
    scale = torch.tensor(1 / 0.07)
    logits = scale * za @ zb.T
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    got = info_nce(za, zb, torch.ones(6, dtype=torch.bool), scale)
    torch.testing.assert_close(got, expected)


def test_info_nce_golden_value() -> None:
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = [[1, .6], [0, .8]]; per-row CE log(1+e^-.4), log(1+e^-.8); per-column CE below, by hand
    row = math.log(1 + math.exp(-0.4)) + math.log(1 + math.exp(-0.8))
    col = (math.log(math.exp(1) + math.exp(0)) - 1) + (math.log(math.exp(0.6) + math.exp(0.8)) - 0.8)
    got = info_nce(za, zb, torch.ones(2, dtype=torch.bool), torch.tensor(1.0))
    assert got.item() == pytest.approx(0.5 * (row / 2 + col / 2), abs=1e-6)


def test_rows_lacking_an_input_are_left_out_and_change_nothing() -> None:
    za, zb = _unit(8, 4, 2), _unit(8, 4, 3)
    valid = torch.tensor([True, True, False, True, True, False, True, True])
    scale = torch.tensor(10.0)
    garbage = zb.clone()
    garbage[~valid] = 1e3
    full = info_nce(za, zb, valid, scale)
    torch.testing.assert_close(full, info_nce(za, garbage, valid, scale))
    torch.testing.assert_close(full, info_nce(za[valid], zb[valid], torch.ones(6, dtype=torch.bool), scale))


def test_same_label_rows_are_not_negatives() -> None:
    za, zb = _unit(6, 4, 4), _unit(6, 4, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scale = torch.tensor(5.0)
    got = info_nce(za, zb, torch.ones(6, dtype=torch.bool), scale, labels=labels, same_label="ignore")
    logits = scale * za @ zb.T
    mask = (labels[:, None] == labels[None, :]) & ~torch.eye(6, dtype=torch.bool)
    target = torch.arange(6)
    expected = 0.5 * (
        F.cross_entropy(logits.masked_fill(mask, -1e4), target)
        + F.cross_entropy((scale * zb @ za.T).masked_fill(mask, -1e4), target)
    )
    torch.testing.assert_close(got, expected)
    # and it differs from treating same-label rows as negatives
    plain = info_nce(za, zb, torch.ones(6, dtype=torch.bool), scale)
    assert not torch.isclose(got, plain)


def test_same_label_rows_as_positives_is_supcon() -> None:
    za, zb = _unit(6, 4, 4), _unit(6, 4, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scale = torch.tensor(5.0)
    got = info_nce(za, zb, torch.ones(6, dtype=torch.bool), scale, labels=labels)
    # by hand: each query's loss is the mean over its positives p of -log softmax(logits)[p]
    expected = 0.0
    for logits in (scale * za @ zb.T, scale * zb @ za.T):
        log_probs = logits.log_softmax(-1)
        for i in range(6):
            positives = (labels == labels[i]).nonzero().squeeze(1)
            expected += -log_probs[i, positives].mean() / 6
    torch.testing.assert_close(got, expected / 2)


def test_fewer_than_two_valid_rows_give_zero_in_the_graph() -> None:
    za = _unit(3, 4, 6).requires_grad_(True)
    loss = info_nce(za, _unit(3, 4, 7), torch.tensor([True, False, False]), torch.tensor(1.0))
    loss.backward()
    assert loss.item() == 0.0 and za.grad is not None and torch.count_nonzero(za.grad) == 0


def _sklearn_retrieval(q: np.ndarray, g: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    sim = q @ g.T
    recalls = {1: [], 5: [], 10: []}
    aps, firsts = [], []
    for i in range(len(q)):
        relevant = (np.arange(len(g)) == i) if labels is None else (labels == labels[i])
        aps.append(average_precision_score(relevant, sim[i]))
        order = np.argsort(-sim[i], kind="stable")
        first = int(np.flatnonzero(relevant[order])[0]) + 1
        firsts.append(first)
        for k in recalls:
            recalls[k].append(first <= k)
    return {
        "recall@1": float(np.mean(recalls[1])),
        "recall@5": float(np.mean(recalls[5])),
        "recall@10": float(np.mean(recalls[10])),
        "median_rank": float(np.median(firsts)),
        "mAP": float(np.mean(aps)),
    }


@pytest.mark.parametrize("with_labels", [False, True])
def test_retrieval_metrics_match_an_independent_implementation(with_labels: bool) -> None:
    q, g = _unit(40, 8, 8), _unit(40, 8, 9)
    g = F.normalize(g + 0.8 * q, dim=-1)  # partners are near, not always nearest
    labels = torch.arange(40) % 4 if with_labels else None
    got = retrieval_metrics(q, g, labels)
    expected = _sklearn_retrieval(q.numpy(), g.numpy(), None if labels is None else labels.numpy())
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_retrieval_metrics_golden_perfect_and_reversed() -> None:
    eye = torch.eye(4)
    assert retrieval_metrics(eye, eye) == {
        "queries": 4,
        "recall@1": 1.0,
        "recall@5": 1.0,
        "recall@10": 1.0,
        "median_rank": 1.0,
        "mAP": 1.0,
    }
    # the gallery reversed: partners rank 3, 1, 3 (query 1 finds itself, the others find it last)
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    g = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    got = retrieval_metrics(q, g)
    assert got["recall@1"] == pytest.approx(1 / 3) and got["median_rank"] == 3.0
    assert got["recall@5"] == 1.0 and got["mAP"] == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)


def test_choose_partners_respects_labels_and_presence() -> None:
    pooled = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    present = torch.tensor([True, True, True, False])
    labels = torch.tensor([0, 0, 1, 1])
    partner, valid = choose_partners(pooled, present, torch.ones(4, dtype=torch.bool), labels, 1.0, None)
    # row 0 (label 0): row 1 shares its label, row 3 lacks the input → the only candidate is row 2
    assert partner[0] == 2 and partner[1] == 2
    # row 2 (label 1): candidates are rows 0 and 1; hard = most similar = row 1
    assert partner[2] == 1
    assert valid.tolist() == [True, True, True, True]
    no_candidate, ok = choose_partners(
        pooled[:2], present[:2], torch.ones(2, dtype=torch.bool), labels[:2], 0.0, None
    )
    assert ok.tolist() == [False, False] and no_candidate.tolist() == [0, 1]


def test_exact_top_k_equals_a_full_sort_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    import polyfuse.retrieval.index as index_module

    monkeypatch.setattr(index_module, "EXACT_BLOCK", 7)  # force several blocks
    gallery = _unit(50, 6, 10).numpy()
    queries = _unit(5, 6, 11).numpy()
    scores, ids = exact_top_k(gallery, queries, 4)
    full = queries @ gallery.T
    expected = np.argsort(-full, axis=1)[:, :4]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), rtol=1e-6)


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu not installed")
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_index_agrees_with_exact_search(kind: str) -> None:
    # clustered, as real embeddings are (uniform points on a sphere are IVF's worst case)
    centres = _unit(30, 16, 12)
    vectors = F.normalize(centres[torch.arange(3000) % 30] + 0.2 * _unit(3000, 16, 13), dim=-1).numpy()
    index = build_faiss(vectors, kind)  # type: ignore[arg-type]
    recall = faiss_recall(index, vectors, k=10, queries=100)
    assert 0.8 <= recall <= 1.0
    # the same measure by hand on the first 20 vectors
    exact = np.argsort(-(vectors[:20] @ vectors.T), axis=1)[:, :10]
    _, approximate = index.search(vectors[:20], 10)
    by_hand = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert by_hand >= 0.8
    _, ids = index.search(vectors[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # each vector finds itself


def test_pairwise_matching_logit_is_the_soft_minimum_over_present_pairs() -> None:
    inputs = {"audio": Modality.AUDIO, "image": Modality.IMAGE, "text": Modality.TEXT}
    context = ObjectiveContext(inputs, {n: 4 for n in inputs}, fused_dim=8, targets={}, config=None)  # type: ignore[arg-type]
    matching = MatchingObjective(context, hidden_dim=3)
    assert not matching.needs_fusion  # the default head reads the inputs' own projections
    g = torch.Generator().manual_seed(0)
    z = {n: torch.randn(3, 3, generator=g, requires_grad=True) for n in inputs}
    # row 0 has every input, row 1 lacks text, row 2 has audio only (no pair)
    present = {
        "audio": torch.tensor([True, True, True]),
        "image": torch.tensor([True, True, False]),
        "text": torch.tensor([True, False, False]),
    }
    logit = matching._pairwise_logit(z, present)

    def pair(a: str, b: str) -> torch.Tensor:  # the head on InferSent's matching features, by hand
        za, zb = z[a], z[b]
        return matching.head(torch.cat([za, zb, za * zb, (za - zb).abs()], dim=-1)).squeeze(-1)

    ai, at, it = pair("audio", "image"), pair("audio", "text"), pair("image", "text")
    expected_row0 = -torch.logsumexp(-torch.stack([ai[0], at[0], it[0]]), dim=0)
    torch.testing.assert_close(logit[0], expected_row0)
    assert logit[0] <= torch.stack([ai[0], at[0], it[0]]).min()  # every pair must agree
    torch.testing.assert_close(logit[1], ai[1])  # the only pair this row has
    assert logit[2] == 0.0
    logit.sum().backward()  # a row without any pair must not send NaN back
    assert all(torch.isfinite(t.grad).all() for t in z.values() if t.grad is not None)

    with pytest.raises(ValueError, match="head must be"):
        MatchingObjective(context, head="sum")  # type: ignore[arg-type]
    assert MatchingObjective(context, head="fused").needs_fusion
