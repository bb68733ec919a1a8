"""Matching (semantic consistency): do a row's inputs belong together?

A binary head is trained on the true rows (label 1) and on negatives made inside the batch by swapping one
input for another row's (label 0). The default head (`head: pairwise`) judges each pair of inputs from
their own projections z_a, z_b through [z_a, z_b, z_a * z_b, |z_a - z_b|] (the matching features of
InferSent, Conneau et al. 2017): agreement is a product of the two sides, which a sum cannot express —
a head over a gated fusion (a convex combination of the inputs) reached only 0.69 ROC-AUC on AV-Digits.
A row's logit is the soft minimum over its pairs (every pair must agree). `head: fused` reads the fused
vector instead (worth it with a fusion that mixes the inputs, e.g. cross-attention). Half of the negatives (`hard_negatives`) are hard:
the swapped-in value is the one most similar to the row's own (cosine of the encoders' pooled features,
detached), so the head must look closely rather than spot an obvious mismatch; the rest are drawn at random.
With `label_column`, a row is never "mismatched" with a row of the same label (a spoken "seven" with
another image of a seven does belong together), which makes the score semantic, not instance-level.

Its probability is the consistency score: `Predictor.consistency(rows)`, e.g. flags a spoken "three"
paired with an image of a seven. The fusion sees exactly the inputs given here (no modality dropout), so a
negative never loses the input that made it wrong.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.models.outputs import EncoderOutput
from polyfuse.objectives.base import ObjectiveContext, label_target, select_inputs
from polyfuse.objectives.contrastive import Projection

if TYPE_CHECKING:
    from polyfuse.data.batch import Batch
    from polyfuse.data.preprocess import Preprocessor
    from polyfuse.data.table import Table
    from polyfuse.models.model import ModelOutput

EVAL_SEED = 0  # negatives for evaluation are drawn from a fixed generator: the score is reproducible


class MatchingObjective(nn.Module):
    """Options:
    inputs:          the inputs whose agreement is judged (default: text, image, audio; at least two)
    hidden_dim:      width of the head's hidden layer
    hard_negatives:  share of negatives that are mined (most similar non-partner), the rest are random
    label_column:    a classification target: same-label rows are never used as each other's negatives
    head:            "pairwise" (each pair of inputs from their own projections) or "fused" (the fused
                     vector)
    """

    name: ClassVar[str] = "matching"
    needs_fusion: ClassVar[bool] = True  # the class may; an instance with head="pairwise" does not
    capabilities: ClassVar[tuple[str, ...]] = ("consistency",)
    trains_in_bf16: ClassVar[bool] = False

    def __init__(
        self,
        context: ObjectiveContext,
        *,
        inputs: list[str] | None = None,
        hidden_dim: int = 256,
        hard_negatives: float = 0.5,
        label_column: str | None = None,
        head: Literal["pairwise", "fused"] = "pairwise",
    ) -> None:
        super().__init__()
        self.inputs = select_inputs("matching", context, inputs, minimum=2)
        if hidden_dim < 1:
            raise ValueError(f"matching: hidden_dim must be >= 1, got {hidden_dim}")
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"matching: hard_negatives must be in [0, 1], got {hard_negatives}")
        self.hard_negatives = hard_negatives
        self.label_column = label_target("matching", context, label_column)
        if head not in ("pairwise", "fused"):
            raise ValueError(f"matching: head must be 'pairwise' or 'fused', got {head!r}")
        self.needs_fusion = head == "fused"  # type: ignore[misc]
        width = 4 * hidden_dim if head == "pairwise" else context.fused_dim
        self.head = nn.Sequential(nn.Linear(width, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        self.projections = nn.ModuleDict(
            {
                str(i): Projection(context.input_dims[name], hidden_dim, "mlp")
                for i, name in enumerate(self.inputs)
            }
            if head == "pairwise"
            else {}
        )

    def _logits(self, output: ModelOutput, swaps: list[tuple[str, Tensor]]) -> list[Tensor]:
        """(B,) logits that each row's inputs belong together: the true rows first, then the rows with
        input `name` taken from row `partner` (B,) long, for each (name, partner) in `swaps`."""
        if not self.needs_fusion:
            # project once; a swap only re-indexes the projections (batch statistics stay the true rows')
            projected = {
                name: self.projections[str(i)](output.features[name].pooled, output.present[name])  # (B, H)
                for i, name in enumerate(self.inputs)
            }
            logits = [self._pairwise_logit(projected, output.present)]
            for name, partner in swaps:
                present = {**output.present, name: output.present[name][partner]}
                logits.append(self._pairwise_logit({**projected, name: projected[name][partner]}, present))
            return logits
        logits = [self.head(output.fuse(output.features, output.present, modality_dropout=False)).squeeze(-1)]
        for name, partner in swaps:
            f = output.features[name]
            features = {
                **output.features,
                name: EncoderOutput(f.tokens[partner], f.token_mask[partner], f.pooled[partner]),
            }
            present = {**output.present, name: output.present[name][partner]}
            fused = output.fuse(features, present, modality_dropout=False)  # (B, D)
            logits.append(self.head(fused).squeeze(-1))
        return logits

    def _pairwise_logit(self, projected: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """Soft minimum over the row's present pairs of the pair logits; 0 where no pair is present."""
        logits, masks = [], []
        for a, b in combinations(self.inputs, 2):
            za, zb = projected[a], projected[b]  # (B, H) each
            logits.append(self.head(torch.cat([za, zb, za * zb, (za - zb).abs()], dim=-1)).squeeze(-1))
            masks.append(present[a] & present[b])
        pair_logits, pair_present = torch.stack(logits, 1), torch.stack(masks, 1)  # (B, P)
        negated = (-pair_logits).masked_fill(~pair_present, float("-inf"))
        # rows without a pair: finite filler, so that no NaN flows back through logsumexp's gradient
        negated = negated.masked_fill(~pair_present.any(1, keepdim=True), 0.0)
        soft_min = -torch.logsumexp(negated, dim=1)  # (B,)
        return torch.where(pair_present.any(1), soft_min, torch.zeros_like(soft_min))

    def _eligible(self, present: dict[str, Tensor]) -> Tensor:
        """(B,) bool: rows holding at least two of the judged inputs (agreement needs two)."""
        return torch.stack([present[n] for n in self.inputs], dim=1).sum(1) >= 2

    def _swaps(
        self, output: ModelOutput, batch: Batch, generator: torch.Generator | None, hard_share: float
    ) -> tuple[list[tuple[str, Tensor]], list[Tensor]]:
        """For each judged input s: (s, partner (B,)) to swap it for another row's, and valid (B,) (False
        where no row can serve as a partner)."""
        labels = batch.targets[self.label_column] if self.label_column else None
        eligible = self._eligible(output.present)
        swaps, valids = [], []
        for name in self.inputs:
            partner, valid = choose_partners(
                output.features[name].pooled.detach(),
                output.present[name],
                eligible & output.present[name],
                labels,
                hard_share,
                generator,
            )
            swaps.append((name, partner))
            valids.append(valid)
        return swaps, valids

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        eligible = self._eligible(output.present)
        swaps, valids = self._swaps(output, batch, None, self.hard_negatives)
        positive, *negatives = self._logits(output, swaps)
        positive_loss = _masked_mean(
            F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive), reduction="none"),
            eligible,
        )
        negative_losses = [
            _masked_mean(
                F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit), reduction="none"), valid
            )
            for logit, valid in zip(negatives, valids, strict=True)
        ]
        negative_loss = torch.stack(negative_losses).mean()
        return {"loss": 0.5 * (positive_loss + negative_loss)}

    def step_metrics(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        rows = self.eval_rows(output, batch)
        scores, truth = _scored(rows)
        if len(truth) == 0:
            return {}
        return {"matching_accuracy": ((scores > 0.5) == truth.bool()).float().mean()}

    def infer(self, output: ModelOutput) -> dict[str, Tensor]:
        """consistency (B,): the probability that the row's inputs belong together; NaN with < 2 inputs."""
        score = torch.sigmoid(self._logits(output, [])[0])
        return {"consistency": torch.where(self._eligible(output.present), score, float("nan"))}

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Scores of the true rows and of the same rows with one input swapped for a random other row's
        (of another label when label_column is set), from a fixed generator."""
        generator = torch.Generator(device=output.present[self.inputs[0]].device).manual_seed(EVAL_SEED)
        swaps, valids = self._swaps(output, batch, generator, hard_share=0.0)
        positive_logit, *negatives = self._logits(output, swaps)
        positive = torch.where(self._eligible(output.present), torch.sigmoid(positive_logit), float("nan"))
        # one negative per row, cycling over the swapped input so every input gets its turn
        which = torch.arange(len(positive), device=positive.device)[:, None] % len(negatives)  # (B, 1)
        logits = torch.stack(negatives, dim=1).gather(1, which).squeeze(1)
        valid = torch.stack(valids, dim=1).gather(1, which).squeeze(1)
        negative = torch.where(valid, torch.sigmoid(logits), float("nan"))
        return {"positive_score": positive, "negative_score": negative}

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]:
        # torchmetrics imported here, not at module level: it pulls in transformers (~1 s) and every
        # model imports this module through the objective registry, including for `polyfuse predict`
        from torchmetrics.functional.classification import binary_auroc

        scores, truth = _scored(rows)
        if truth.sum() == 0 or truth.sum() == len(truth):
            return {"consistency": {"pairs": len(truth)}}
        return {
            "consistency": {
                "pairs": len(truth),
                "roc_auc": float(binary_auroc(scores, truth.long())),
                "accuracy": float(((scores > 0.5) == truth.bool()).float().mean()),
                "mean_true_score": float(scores[truth.bool()].mean()),
                "mean_mismatched_score": float(scores[~truth.bool()].mean()),
            }
        }

    def fit_data(self, train: Table, preprocessor: Preprocessor) -> None:
        return None


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _scored(rows: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(scores, truth) over the rows that have a score: true rows 1, swapped rows 0."""
    positive, negative = rows["positive_score"], rows["negative_score"]
    pos, neg = positive[~positive.isnan()], negative[~negative.isnan()]
    truth = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    return torch.cat([pos, neg]), truth


def choose_partners(
    pooled: Tensor,
    present: Tensor,
    rows: Tensor,
    labels: Tensor | None,
    hard_share: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """For each row, another row whose value of this input it takes in a negative.

    pooled (B, D): the input's features; present (B,): rows that have the input (candidates); rows (B,):
    rows that need a partner; labels (B,): partners must differ in label. A row is hard with probability
    `hard_share`: its partner is the most similar candidate; otherwise a uniformly random one.
    Returns partner (B,) long and valid (B,) bool (False where no candidate exists).
    """
    b = pooled.shape[0]
    allowed = present[None, :] & ~torch.eye(b, dtype=torch.bool, device=pooled.device)  # (B, B)
    if labels is not None:
        allowed &= labels[:, None] != labels[None, :]
    valid = rows & allowed.any(dim=1)
    unit = F.normalize(pooled.float(), dim=-1)
    similarity = (unit @ unit.T).masked_fill(~allowed, float("-inf"))  # (B, B)
    hardest = similarity.argmax(dim=1)
    noise = torch.rand((b, b), generator=generator, device=pooled.device).masked_fill(~allowed, -1.0)
    random_pick = noise.argmax(dim=1)
    hard = torch.rand(b, generator=generator, device=pooled.device) < hard_share
    partner = torch.where(hard, hardest, random_pick)
    return torch.where(valid, partner, torch.arange(b, device=pooled.device)), valid
