"""Contrastive alignment: one shared embedding space for several inputs (CLIP / ImageBind style).

Each input's pooled encoder output is projected to `embed_dim` and L2-normalised. For every pair of inputs
(all pairs, or each input with one `anchor`, as ImageBind binds every modality to images), the symmetric
InfoNCE loss pulls a row's two embeddings together and pushes it away from the other rows of the batch:

    logits_ab = scale · z_a @ z_bᵀ                        (B_a, B_b); scale = 1 / temperature
    loss_ab   = ½ · (CE(logits_ab, diag) + CE(logits_abᵀ, diag))

Rows lacking either input of a pair are left out of that pair's loss. With `label_column`, rows with the
same label are not each other's negatives, so a batch holding two spoken "sevens" does not teach the
model that they differ: by default they are positives (supervised contrastive learning), or, with
`same_label: ignore`, their logits are masked out. Under DDP the embeddings of every process are gathered
with gradients, and each process scores its own rows against the global batch (memory linear in it).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.evaluation.retrieval import retrieval_metrics
from polyfuse.objectives.base import ObjectiveContext, label_target, select_inputs

if TYPE_CHECKING:
    from polyfuse.data.batch import Batch
    from polyfuse.data.preprocess import Preprocessor
    from polyfuse.data.table import Table
    from polyfuse.models.model import ModelOutput

MASKED = -1e4  # a logit that softmax turns into ~0 without the NaNs of -inf in fully masked rows


class ContrastiveObjective(nn.Module):
    """Options:
    inputs:        the inputs to align (default: the text, image and audio inputs; at least two)
    anchor:        bind every other input to this one only (ImageBind); default: all pairs
    embed_dim:     width of the shared space
    projection:    "linear", or "mlp" (Linear → BatchNorm → GELU → Linear, SimCLR's head)
    temperature:   fixed temperature; null learns it (CLIP: starts at 0.07, scale clamped at max_logit_scale)
    label_column:  a classification target; rows sharing its label are not treated as negatives
    same_label:    "positive": rows sharing a label are positives (supervised contrastive); "ignore": they
                   are only left out of each other's negatives
    retrieval:     how evaluation counts a hit: "label" (a row with the same label; needs label_column),
                   "instance" (the same row); "auto" picks label when label_column is set
    """

    name: ClassVar[str] = "contrastive"
    needs_fusion: ClassVar[bool] = False
    capabilities: ClassVar[tuple[str, ...]] = ("embed", "search", "zero_shot")
    trains_in_bf16: ClassVar[bool] = False

    def __init__(
        self,
        context: ObjectiveContext,
        *,
        inputs: list[str] | None = None,
        anchor: str | None = None,
        embed_dim: int = 128,
        projection: Literal["linear", "mlp"] = "mlp",
        temperature: float | None = None,
        max_logit_scale: float = 100.0,
        label_column: str | None = None,
        same_label: Literal["positive", "ignore"] = "positive",
        retrieval: Literal["auto", "label", "instance"] = "auto",
    ) -> None:
        super().__init__()
        from polyfuse.models.model import module_key

        self.inputs = select_inputs("contrastive", context, inputs, minimum=2)
        if anchor is not None and anchor not in self.inputs:
            raise ValueError(f"contrastive: anchor '{anchor}' is not one of its inputs {self.inputs}")
        if embed_dim < 1:
            raise ValueError(f"contrastive: embed_dim must be >= 1, got {embed_dim}")
        if projection not in ("linear", "mlp"):
            raise ValueError(f"contrastive: projection must be 'linear' or 'mlp', got {projection!r}")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"contrastive: temperature must be > 0, got {temperature}")
        self.label_column = label_target("contrastive", context, label_column)
        if same_label not in ("positive", "ignore"):
            raise ValueError(f"contrastive: same_label must be 'positive' or 'ignore', got {same_label!r}")
        self.same_label = same_label
        if retrieval == "label" and self.label_column is None:
            raise ValueError("contrastive: retrieval 'label' needs label_column")
        self.retrieval = retrieval if retrieval != "auto" else ("label" if self.label_column else "instance")
        self.anchor = anchor
        self.pairs = (
            [(anchor, other) for other in self.inputs if other != anchor]
            if anchor is not None
            else list(combinations(self.inputs, 2))
        )
        self.embed_dim = embed_dim
        self.keys = {n: module_key(n) for n in self.inputs}
        self.projections = nn.ModuleDict(
            {self.keys[n]: Projection(context.input_dims[n], embed_dim, projection) for n in self.inputs}
        )
        self.max_log_scale = math.log(max_logit_scale)
        if temperature is None:
            self.log_scale: Tensor = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(1 / temperature)))

    def scale(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    def embed(self, output: ModelOutput) -> dict[str, Tensor]:
        """input → (B, embed_dim) L2-normalised embeddings (rows lacking the input: zeros)."""
        return {
            n: F.normalize(
                self.projections[self.keys[n]](output.features[n].pooled, output.present[n]), dim=-1
            )
            for n in self.inputs
            if n in output.features
        }

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        z = {n: gather_with_grad(v) for n, v in self.embed(output).items()}  # (W·B, E) per input
        present = {n: gather_with_grad(output.present[n]) for n in self.inputs}
        labels = gather_with_grad(batch.targets[self.label_column]) if self.label_column else None
        local = local_rows(len(batch), z[self.inputs[0]].device)  # (W·B,) bool: this process's rows
        scale = self.scale()
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=scale.device)
        for a, b in self.pairs:
            loss = info_nce(
                z[a],
                z[b],
                present[a] & present[b],
                scale,
                labels=labels,
                local=local,
                same_label=self.same_label,
            )
            losses[f"contrastive_{a}_{b}_loss"] = loss
            total = total + loss
        losses["loss"] = total / len(self.pairs)
        return losses

    def step_metrics(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """In-batch top-1 accuracy per pair (a → b): is the row's own partner the most similar?"""
        z = self.embed(output)
        metrics = {}
        for a, b in self.pairs:
            both = output.present[a] & output.present[b]
            if both.sum() < 2:
                continue
            similarity = z[a][both] @ z[b][both].T  # (n, n)
            target = torch.arange(similarity.shape[0], device=similarity.device)
            metrics[f"contrastive_{a}_{b}_accuracy"] = (similarity.argmax(-1) == target).float().mean()
        return metrics

    def infer(self, output: ModelOutput) -> dict[str, Tensor]:
        return {f"embedding/{n}": z for n, z in self.embed(output).items()}

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        rows = self.infer(output)
        rows.update({f"present/{n}": output.present[n] for n in self.inputs})
        if self.label_column is not None:
            rows["label"] = batch.targets[self.label_column]
        return rows

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]:
        """Retrieval in both directions for every aligned pair: recall@1/5/10, median rank, mAP."""
        labels = rows.get("label") if self.retrieval == "label" else None
        results: dict[str, Any] = {}
        for a, b in self.pairs:
            both = rows[f"present/{a}"] & rows[f"present/{b}"]
            za, zb = rows[f"embedding/{a}"][both], rows[f"embedding/{b}"][both]
            pair_labels = labels[both] if labels is not None else None
            for query, gallery, name in ((za, zb, f"{a}_to_{b}"), (zb, za, f"{b}_to_{a}")):
                metrics = retrieval_metrics(query, gallery, pair_labels)
                results[f"retrieval_{name}"] = {"match": self.retrieval, **metrics}
        return results

    def fit_data(self, train: Table, preprocessor: Preprocessor) -> None:
        return None


class Projection(nn.Module):
    """Pooled encoder output (B, D) → (B, E), before normalisation.

    "mlp" is SimCLR's head: Linear → BatchNorm → GELU → Linear. The batch norm matters here: encoders
    trained from scratch start with pooled features that are nearly the same for every row (post-ReLU
    averages), so without centring every embedding starts at one point, the softmax over the batch is
    flat, and alignment barely moves for epochs. Its statistics are taken over the rows that have the
    input only; the other rows hold padding (even NaN) and are passed through as zeros."""

    def __init__(self, input_dim: int, embed_dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.first: nn.Module = nn.Linear(input_dim, embed_dim)
        else:
            self.first = nn.Linear(input_dim, input_dim)
            self.norm = nn.BatchNorm1d(input_dim)
            self.last = nn.Linear(input_dim, embed_dim)

    def forward(self, pooled: Tensor, present: Tensor) -> Tensor:
        if self.kind == "linear":
            out: Tensor = self.first(pooled)
            return out
        rows = present.nonzero().squeeze(1)
        hidden = self.first(pooled[rows])  # (n, D) the present rows only
        if self.training and len(rows) < 2:  # batch statistics need two rows: use the running ones
            hidden = F.batch_norm(
                hidden, self.norm.running_mean, self.norm.running_var, self.norm.weight, self.norm.bias
            )
        else:
            hidden = self.norm(hidden)
        projected = self.last(F.gelu(hidden))  # (n, E)
        out = projected.new_zeros((pooled.shape[0], projected.shape[1]))
        return out.index_copy(0, rows, projected)


def info_nce(
    za: Tensor,
    zb: Tensor,
    valid: Tensor,
    scale: Tensor,
    *,
    labels: Tensor | None = None,
    local: Tensor | None = None,
    same_label: Literal["positive", "ignore"] = "positive",
) -> Tensor:
    """Symmetric InfoNCE over the rows where `valid` (N,) holds.

    za, zb: (N, E) L2-normalised; row i of za and row i of zb are a positive pair. labels (N,): rows with
    the same label are not each other's negatives — with same_label="positive" they are positives too
    (SupCon, Khosla et al. 2020: the target spreads evenly over them), with "ignore" their logits are
    masked out. local (N,) bool: the rows this process
    scores as queries (all rows without DDP); every valid row is a candidate key. Returns 0 (in the graph)
    when fewer than two rows are valid.
    """
    if int(valid.sum()) < 2:
        return (za.sum() + zb.sum()) * 0.0
    idx = valid.nonzero().squeeze(1)  # (n,)
    za, zb = za[idx], zb[idx]
    queries = (
        (local[idx] if local is not None else torch.ones_like(idx, dtype=torch.bool)).nonzero().squeeze(1)
    )
    if queries.numel() == 0:
        return (za.sum() + zb.sum()) * 0.0
    logits_ab = scale * za[queries] @ zb.T  # (q, n): local queries against every valid key
    logits_ba = scale * zb[queries] @ za.T
    if labels is None:
        return 0.5 * (F.cross_entropy(logits_ab, queries) + F.cross_entropy(logits_ba, queries))
    row_labels = labels[idx]
    same = row_labels[queries][:, None] == row_labels[None, :]  # (q, n), the partner included
    if same_label == "positive":
        target = same.float() / same.float().sum(1, keepdim=True)  # (q, n) rows sum to 1
        return 0.5 * (F.cross_entropy(logits_ab, target) + F.cross_entropy(logits_ba, target))
    mask = same.clone()
    mask[torch.arange(len(queries)), queries] = False  # the true partner stays the positive
    return 0.5 * (
        F.cross_entropy(logits_ab.masked_fill(mask, MASKED), queries)
        + F.cross_entropy(logits_ba.masked_fill(mask, MASKED), queries)
    )


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` (B, ...) from every process in rank order. Float tensors keep their gradient to every
    process (torch.distributed.nn.all_gather); masks and labels are gathered as plain values. Batches of
    unequal size are padded with zeros (False for masks), so padding rows are never "present"."""
    world, _ = _world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_nn

    longest = max(_gathered_sizes(x.shape[0], x.device))
    values = x if x.is_floating_point() else x.long()
    if values.shape[0] < longest:
        values = torch.cat([values, values.new_zeros((longest - values.shape[0], *values.shape[1:]))])
    if values.is_floating_point():
        parts = list(dist_nn.all_gather(values))  # type: ignore[no-untyped-call]
    else:
        parts = [torch.zeros_like(values) for _ in range(world)]
        torch.distributed.all_gather(parts, values)
    return torch.cat(parts, dim=0).to(x.dtype)


def _gathered_sizes(batch_size: int, device: torch.device) -> list[int]:
    world, _ = _world()
    size = torch.tensor([batch_size], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def local_rows(batch_size: int, device: torch.device) -> Tensor:
    """(W·B_max,) bool: True on the rows of the gathered batch that came from this process."""
    world, rank = _world()
    if world == 1:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    longest = max(_gathered_sizes(batch_size, device))
    local = torch.zeros(world * longest, dtype=torch.bool, device=device)
    local[rank * longest : rank * longest + batch_size] = True
    return local
