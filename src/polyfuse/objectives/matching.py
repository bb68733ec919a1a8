"""Matching (semantic consistency): do a row's inputs belong together?

A binary head over the fused vector is trained on the true rows (label 1) and on negatives made inside the
batch by swapping one input for another row's (label 0). Half of the negatives (`hard_negatives`) are hard:
the swapped-in value is the one most similar to the row's own (cosine of the encoders' pooled features,
detached), so the head must look closely rather than spot an obvious mismatch; the rest are drawn at random.
With `label_column`, a row is never "mismatched" with a row of the same label (a spoken "seven" with
another image of a seven does belong together), which makes the score semantic, not instance-level.

Its probability is the consistency score: `Predictor.consistency(rows)`, e.g. flags a spoken "three"
paired with an image of a seven. The fusion sees exactly the inputs given here (no modality dropout), so a
negative never loses the input that made it wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from polyfuse.models.outputs import EncoderOutput
from polyfuse.objectives.base import ObjectiveContext, label_target, select_inputs

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
    """

    name: ClassVar[str] = "matching"
    needs_fusion: ClassVar[bool] = True
    capabilities: ClassVar[tuple[str, ...]] = ("consistency",)

    def __init__(
        self,
        context: ObjectiveContext,
        *,
        inputs: list[str] | None = None,
        hidden_dim: int = 256,
        hard_negatives: float = 0.5,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        self.inputs = select_inputs("matching", context, inputs, minimum=2)
        if hidden_dim < 1:
            raise ValueError(f"matching: hidden_dim must be >= 1, got {hidden_dim}")
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"matching: hard_negatives must be in [0, 1], got {hard_negatives}")
        self.hard_negatives = hard_negatives
        self.label_column = label_target("matching", context, label_column)
        self.head = nn.Sequential(
            nn.Linear(context.fused_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1)
        )

    def _logit(
        self, output: ModelOutput, features: dict[str, EncoderOutput], present: dict[str, Tensor]
    ) -> Tensor:
        fused = output.fuse(features, present, modality_dropout=False)  # (B, D)
        logit: Tensor = self.head(fused).squeeze(-1)  # (B,)
        return logit

    def _eligible(self, present: dict[str, Tensor]) -> Tensor:
        """(B,) bool: rows holding at least two of the judged inputs (agreement needs two)."""
        return torch.stack([present[n] for n in self.inputs], dim=1).sum(1) >= 2

    def _negatives(
        self, output: ModelOutput, batch: Batch, generator: torch.Generator | None, hard_share: float
    ) -> list[tuple[Tensor, Tensor]]:
        """For each judged input s: (logits (B,), valid (B,)) of the rows with s swapped for a partner's."""
        labels = batch.targets[self.label_column] if self.label_column else None
        eligible = self._eligible(output.present)
        negatives = []
        for name in self.inputs:
            partner, valid = choose_partners(
                output.features[name].pooled.detach(),
                output.present[name],
                eligible & output.present[name],
                labels,
                hard_share,
                generator,
            )
            swapped = dict(output.features)
            f = output.features[name]
            swapped[name] = EncoderOutput(f.tokens[partner], f.token_mask[partner], f.pooled[partner])
            present = dict(output.present)
            present[name] = output.present[name][partner]
            negatives.append((self._logit(output, swapped, present), valid))
        return negatives

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        eligible = self._eligible(output.present)
        positive = self._logit(output, output.features, output.present)
        positive_loss = _masked_mean(
            F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive), reduction="none"),
            eligible,
        )
        negative_losses = [
            _masked_mean(
                F.binary_cross_entropy_with_logits(logit, torch.zeros_like(logit), reduction="none"), valid
            )
            for logit, valid in self._negatives(output, batch, None, self.hard_negatives)
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
        score = torch.sigmoid(self._logit(output, output.features, output.present))
        return {"consistency": torch.where(self._eligible(output.present), score, float("nan"))}

    def eval_rows(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        """Scores of the true rows and of the same rows with one input swapped for a random other row's
        (of another label when label_column is set), from a fixed generator."""
        generator = torch.Generator(device=output.present[self.inputs[0]].device).manual_seed(EVAL_SEED)
        positive = self.infer(output)["consistency"]
        negatives = self._negatives(output, batch, generator, hard_share=0.0)
        # one negative per row, cycling over the swapped input so every input gets its turn
        which = torch.arange(len(positive), device=positive.device) % len(negatives)
        logits = torch.stack([n[0] for n in negatives], dim=1).gather(1, which[:, None]).squeeze(1)
        valid = torch.stack([n[1] for n in negatives], dim=1).gather(1, which[:, None]).squeeze(1)
        negative = torch.where(valid, torch.sigmoid(logits), float("nan"))
        return {"positive_score": positive, "negative_score": negative}

    def score(self, rows: dict[str, Tensor]) -> dict[str, Any]:
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
