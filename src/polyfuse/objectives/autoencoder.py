"""A multimodal autoencoder: one code from all present inputs, one decoder per input.

    z = W · fuse(x_1, ..., x_M)          (the model's fusion; missing inputs are what fusions handle)
    loss = Σ_m λ_m ‖x_m − g_m(z)‖² + Ω,  Ω = latent_penalty · ‖z‖²

(the founding documents' formula; categories use cross-entropy in place of the squared error). The fusion's
modality dropout hides inputs during training, so the code learns to rebuild every input from the others
(Ngiam et al. 2011): that is what `generate` from a subset of inputs relies on. Being deterministic, it has
no prior to sample from: unconditional generation needs the `vae` objective. The anomaly score of a row is
its loss without Ω.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from polyfuse.objectives.base import ObjectiveContext
from polyfuse.objectives.reconstruction import ReconstructionBase

if TYPE_CHECKING:
    from polyfuse.data.batch import Batch
    from polyfuse.models.model import ModelOutput


class AutoencoderObjective(ReconstructionBase):
    """Options:
    inputs:              inputs the code reads and rebuilds (default: all; text is read, not rebuilt)
    latent_dim:          size of the code z
    latent_penalty:      Ω's weight on the mean squared code
    likelihood_weights:  λ per decoded input (default: balanced, see `objectives.reconstruction`)
    false_alarm_rate:    share of validation rows above the anomaly threshold
    audio_frames:        frames an audio decoder rebuilds (default: audio.max_seconds' worth, at most 512)
    """

    name: ClassVar[str] = "autoencoder"
    needs_fusion: ClassVar[bool] = True
    capabilities: ClassVar[tuple[str, ...]] = ("generate", "anomaly")
    trains_in_bf16: ClassVar[bool] = False

    def __init__(
        self,
        context: ObjectiveContext,
        *,
        inputs: list[str] | None = None,
        latent_dim: int = 32,
        latent_penalty: float = 0.0,
        likelihood_weights: dict[str, float] | None = None,
        false_alarm_rate: float = 0.01,
        audio_frames: int | None = None,
    ) -> None:
        super().__init__()
        if not latent_penalty >= 0:
            raise ValueError(f"autoencoder: latent_penalty must be >= 0, got {latent_penalty}")
        self._setup(context, inputs, latent_dim, likelihood_weights, false_alarm_rate, audio_frames, False)
        self.latent_penalty = latent_penalty
        self.code = nn.Linear(context.fused_dim, latent_dim)

    def _code(self, output: ModelOutput, present: dict[str, Tensor]) -> Tensor:
        if present is output.present:
            fused = output.fused  # training: with the fusion's modality dropout
        else:
            fused = output.fuse(output.features, present, modality_dropout=False)
        code: Tensor = self.code(fused)
        return code

    def _distortion(self, z: Tensor, batch: Batch, present: dict[str, Tensor]) -> Tensor:
        terms = {}
        for n in self.decoded:
            decoder = self.decoder(n)
            terms[n] = torch.where(present[n], decoder.distortion(decoder(z), batch.inputs[n]), 0.0)
        return self.weighted(terms)

    def losses(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        z = self._code(output, output.present)
        distortion = self._distortion(z, batch, output.present).mean()
        penalty = self.latent_penalty * z.square().mean()
        return {"loss": distortion / self.normaliser + penalty, "autoencoder_distortion": distortion.detach()}

    def row_loss(self, output: ModelOutput, batch: Batch, present: dict[str, Tensor]) -> Tensor:
        z = self._code(output, dict(present))
        return self._distortion(z, batch, present) / self.normaliser

    def reconstruct(self, output: ModelOutput, present: dict[str, Tensor]) -> dict[str, Tensor]:
        z = self._code(output, dict(present))
        return {n: self.decoder(n)(z) for n in self.decoded}

    def latent(
        self,
        output: ModelOutput | None,
        n: int,
        temperature: float,
        generator: torch.Generator | None,
        target: str | None = None,
    ) -> Tensor:
        if output is None:
            raise ValueError(
                "an autoencoder has no prior to sample from: give source inputs (--from), or train with the "
                "'vae' objective for unconditional samples"
            )
        return self._code(output, dict(output.present))

    def infer(self, output: ModelOutput) -> dict[str, Tensor]:
        return {"latent": self._code(output, dict(output.present))}
