"""Decoders: a latent code z (B, Z) back to one input's preprocessed tensor, with its likelihood.

Each decoder reconstructs exactly what the encoder saw (see `data.batch.ModalityBatch`):

    image     (B, C, H, W) normalised pixels       transposed convolutions; Gaussian or Laplace, one
                                                   learned scale, its location squashed into the
                                                   pixels' range [0, 255] (normalised) by a sigmoid
    audio     (B, F, T) log-mel / MFCC frames      transposed 1-D convolutions over time to a fixed T_out
                                                   frames (+ one row of frame-presence logits, so a
                                                   generated clip knows its length); Gaussian on the real
                                                   frames (frames past T_out are not modelled), Bernoulli
                                                   on presence
    numeric   (B, N) standardised columns          MLP; a Gaussian per column with its own learned σ, on
                                                   the values that were given
    category  (B, K) vocabulary ids                MLP; a categorical per column (id 0 = missing is skipped)

`nll` is the negative log-likelihood per row (B,) in nats (0 for rows lacking the input); `distortion` is
the autoencoder's loss: the sum of squared errors (cross-entropy for categories); `mean` turns the raw
output into values in the input's own space. With `learn_scale=False` σ stays 1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyfuse.data.batch import ModalityBatch

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
LOG_2 = math.log(2.0)
MIN_LOG_SCALE, MAX_LOG_SCALE = -4.0, 2.0  # σ in [0.018, 7.4]: a collapsing σ would make the NLL explode


def gaussian_nll(mean: Tensor, target: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise −log N(target | mean, σ²) with log σ broadcast to the values."""
    log_scale = log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
    return 0.5 * ((target - mean) * torch.exp(-log_scale)).square() + log_scale + HALF_LOG_2PI


def laplace_nll(location: Tensor, target: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise −log Laplace(target | location, b) with log b broadcast to the values."""
    log_scale = log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
    return (target - location).abs() * torch.exp(-log_scale) + log_scale + LOG_2


def _upsampling_stack(
    n_ups: int, width: int, conv: type[nn.Module], norm: type[nn.Module]
) -> tuple[nn.Sequential, int]:
    """n_ups × [transposed conv (kernel 4, stride 2: doubles the size) → norm → ReLU], halving the width;
    with the number of channels it ends on."""
    layers: list[nn.Module] = []
    channels = width
    for _ in range(n_ups):
        out = max(channels // 2, 16)
        layers += [conv(channels, out, 4, 2, 1), norm(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers), channels


def _n_ups(size: int, start_at_most: int, at_most: int = 6) -> int:
    """How many doublings take a map of at most `start_at_most` to `size` (at least 1)."""
    ups = 1
    while math.ceil(size / 2**ups) > start_at_most and ups < at_most:
        ups += 1
    return ups


class ImageDecoder(nn.Module):
    """z → Linear → (width, h0, w0) → transposed convs (×2 each) → 3×3 conv → (C, H, W), cropped.

    The mean is lo + (hi − lo) · sigmoid(raw), per channel, where [lo, hi] is [0, 255] after the input's
    normalisation (x / 255 − mean) / std. An unbounded mean regressed toward the middle: generated MNIST
    digits came out with a grey haze over a black background, which a classifier of real digits read as
    "8" for almost every row (0.23 of reconstructions recognised; 0.96 once the haze was stretched away).

    `likelihood`: "gaussian" fits the mean of the images a code could stand for, "laplace" their per-pixel
    median. A code that says which digit but not its style (one generated from the audio alone) decodes to
    a blurred average of that digit's styles under a Gaussian, and to their per-pixel median under a
    Laplace (MMVAE's choice for images): sharper strokes, though grey where the styles disagree. On
    AV-Digits a classifier of sharp digits recognised 0.10 of the former and 0.63-0.74 of the latter."""

    lo: Tensor  # (C, 1, 1) the normalised value of pixel 0
    hi: Tensor  # (C, 1, 1) the normalised value of pixel 255

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        size: tuple[int, int],
        width: int = 64,
        learn_scale: bool = True,
        pixel_mean: tuple[float, ...] = (0.5,),
        pixel_std: tuple[float, ...] = (0.5,),
        likelihood: Literal["gaussian", "laplace"] = "gaussian",
    ) -> None:
        super().__init__()
        if likelihood not in ("gaussian", "laplace"):
            raise ValueError(f"image likelihood must be 'gaussian' or 'laplace', got {likelihood!r}")
        self.likelihood = likelihood
        self.channels, self.size = channels, size
        mean = torch.tensor(pixel_mean, dtype=torch.float32).expand(channels)[:, None, None]
        std = torch.tensor(pixel_std, dtype=torch.float32).expand(channels)[:, None, None]
        self.register_buffer("lo", (0.0 - mean) / std, persistent=False)  # from the config, not saved
        self.register_buffer("hi", (1.0 - mean) / std, persistent=False)
        ups = _n_ups(max(size), 8)
        self.start = (math.ceil(size[0] / 2**ups), math.ceil(size[1] / 2**ups))
        self.width = width
        self.project = nn.Sequential(nn.Linear(latent_dim, width * self.start[0] * self.start[1]), nn.ReLU())
        self.up, last = _upsampling_stack(ups, width, nn.ConvTranspose2d, nn.BatchNorm2d)
        self.out = nn.Conv2d(last, channels, 3, padding=1)
        # Start at the average pixel (normalised 0), not at the middle of the range: from a grey start the
        # background (most pixels) pushed the output down by making every feature map inhibit it, and
        # strokes could only be as bright as the bias, where no feature fired (generated MNIST strokes
        # never passed pixel 132-169 of 255). From the average, strokes are what features must add.
        share = (-self.lo / (self.hi - self.lo)).clamp(1e-3, 1 - 1e-3).flatten()  # (C,) σ(bias)
        bias = self.out.bias
        assert bias is not None
        with torch.no_grad():
            bias.copy_(torch.log(share / (1 - share)))
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=learn_scale)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], self.width, *self.start)
        out: Tensor = self.out(self.up(x))[:, :, : self.size[0], : self.size[1]]  # (B, C, H, W)
        return out

    def mean(self, raw: Tensor) -> Tensor:
        return self.lo + (self.hi - self.lo) * torch.sigmoid(raw)

    def elements(self) -> int:
        return self.channels * self.size[0] * self.size[1]

    def _usable(self, batch: ModalityBatch) -> bool:
        # a batch where no row has the image holds (B, C, 1, 1) placeholders
        return bool(batch.present.any()) and tuple(batch.values.shape[2:]) == self.size

    def nll(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        if not self._usable(batch):
            return raw.sum((1, 2, 3)) * 0.0
        elementwise = laplace_nll if self.likelihood == "laplace" else gaussian_nll
        per_row = elementwise(self.mean(raw), batch.values, self.log_scale).sum((1, 2, 3))
        return torch.where(batch.present, per_row, 0.0)

    def distortion(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        if not self._usable(batch):
            return raw.sum((1, 2, 3)) * 0.0
        return torch.where(batch.present, (self.mean(raw) - batch.values).square().sum((1, 2, 3)), 0.0)

    def counts(self, batch: ModalityBatch) -> Tensor:
        """(B,) values modelled per row."""
        return batch.present.float() * self.elements()


class AudioDecoder(nn.Module):
    """z → Linear → (width, t0) → transposed 1-D convs over time → 1-D conv → (F + 1, T_out): F feature
    rows and one row of frame-presence logits."""

    def __init__(
        self, latent_dim: int, n_bins: int, frames: int, width: int = 128, learn_scale: bool = True
    ) -> None:
        super().__init__()
        self.n_bins, self.frames, self.width = n_bins, frames, width
        ups = _n_ups(frames, 16)
        self.start = math.ceil(frames / 2**ups)
        self.project = nn.Sequential(nn.Linear(latent_dim, width * self.start), nn.ReLU())
        self.up, last = _upsampling_stack(ups, width, nn.ConvTranspose1d, nn.BatchNorm1d)
        self.out = nn.Conv1d(last, n_bins + 1, 3, padding=1)
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=learn_scale)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], self.width, self.start)
        out: Tensor = self.out(self.up(x))[:, :, : self.frames]  # (B, F + 1, T_out)
        return out

    def elements(self) -> int:
        return (self.n_bins + 1) * self.frames

    def _aligned(self, raw: Tensor, batch: ModalityBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(prediction (B, F, T), target (B, F, T), frame mask (B, T), presence targets (B, T_out)) with T
        the frames both have."""
        mask = batch.token_mask
        assert mask is not None, "audio batches carry a frame mask"
        t = min(batch.values.shape[2], self.frames)
        presence = torch.zeros(raw.shape[0], self.frames, device=raw.device)
        presence[:, :t] = mask[:, :t].float()
        return raw[:, : self.n_bins, :t], batch.values[:, :, :t], mask[:, :t], presence

    def nll(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        prediction, target, mask, presence = self._aligned(raw, batch)
        values = gaussian_nll(prediction, target, self.log_scale) * mask[:, None, :]
        frames = F.binary_cross_entropy_with_logits(raw[:, self.n_bins], presence, reduction="none")
        return torch.where(batch.present, values.sum((1, 2)) + frames.sum(1), 0.0)

    def distortion(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        prediction, target, mask, presence = self._aligned(raw, batch)
        squared = ((prediction - target).square() * mask[:, None, :]).sum((1, 2))
        frames = F.binary_cross_entropy_with_logits(raw[:, self.n_bins], presence, reduction="none")
        return torch.where(batch.present, squared + frames.sum(1), 0.0)

    def squared_error(self, raw: Tensor, batch: ModalityBatch) -> tuple[Tensor, Tensor]:
        """(sum of squared errors over the real frames (B,), number of values (B,))."""
        prediction, target, mask, _ = self._aligned(raw, batch)
        squared = ((prediction - target).square() * mask[:, None, :]).sum((1, 2))
        count = mask.sum(1).float() * self.n_bins
        return torch.where(batch.present, squared, 0.0), torch.where(batch.present, count, 0.0)

    def mean(self, raw: Tensor) -> Tensor:
        return raw[:, : self.n_bins]

    def lengths(self, raw: Tensor) -> Tensor:
        """(B,) frames a generated clip lasts: those whose presence probability is over ½ (at least 1)."""
        return (raw[:, self.n_bins] > 0).sum(1).clamp(min=1)

    def counts(self, batch: ModalityBatch) -> Tensor:
        mask = batch.token_mask
        assert mask is not None
        frames = mask[:, : self.frames].sum(1).float()
        return torch.where(batch.present, frames * self.n_bins + self.frames, 0.0)


class NumericDecoder(nn.Module):
    """z → MLP → (B, N) standardised values; a learned σ per column."""

    def __init__(self, latent_dim: int, n_columns: int, hidden: int = 128, learn_scale: bool = True) -> None:
        super().__init__()
        self.n_columns = n_columns
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_columns))
        self.log_scale = nn.Parameter(torch.zeros(n_columns), requires_grad=learn_scale)

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.net(z)
        return out

    def elements(self) -> int:
        return self.n_columns

    def _given(self, batch: ModalityBatch) -> Tensor:
        given = batch.token_mask if batch.token_mask is not None else torch.ones_like(batch.values).bool()
        return given & batch.present[:, None]  # (B, N)

    def nll(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        return (gaussian_nll(raw, batch.values, self.log_scale) * self._given(batch)).sum(1)

    def distortion(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        return ((raw - batch.values).square() * self._given(batch)).sum(1)

    def mean(self, raw: Tensor) -> Tensor:
        return raw

    def counts(self, batch: ModalityBatch) -> Tensor:
        return self._given(batch).sum(1).float()


class CategoryDecoder(nn.Module):
    """z → MLP → logits for each column's vocabulary (concatenated: (B, Σ V_k))."""

    def __init__(self, latent_dim: int, cardinalities: list[int], hidden: int = 128) -> None:
        super().__init__()
        self.cardinalities = list(cardinalities)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, sum(self.cardinalities))
        )

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.net(z)
        return out

    def elements(self) -> int:
        return len(self.cardinalities)

    def _per_column(self, raw: Tensor, batch: ModalityBatch) -> tuple[Tensor, Tensor]:
        """Cross-entropy (B, K) and where the value is given (B, K)."""
        losses = []
        for k, logits in enumerate(torch.split(raw, self.cardinalities, dim=1)):
            target = batch.values[:, k].clamp(max=logits.shape[1] - 1)
            losses.append(F.cross_entropy(logits, target, reduction="none"))
        given = (batch.values > 0) & batch.present[:, None]  # id 0 = missing
        return torch.stack(losses, dim=1), given

    def nll(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        losses, given = self._per_column(raw, batch)
        return (losses * given).sum(1)

    def distortion(self, raw: Tensor, batch: ModalityBatch) -> Tensor:
        return self.nll(raw, batch)

    def mean(self, raw: Tensor) -> Tensor:
        """(B, K) the most likely id per column (never 0, which means "missing")."""
        ids = [logits[:, 1:].argmax(1) + 1 for logits in torch.split(raw, self.cardinalities, dim=1)]
        return torch.stack(ids, dim=1)

    def counts(self, batch: ModalityBatch) -> Tensor:
        return ((batch.values > 0) & batch.present[:, None]).sum(1).float()


Decoder = ImageDecoder | AudioDecoder | NumericDecoder | CategoryDecoder
