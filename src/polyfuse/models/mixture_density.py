"""A mixture density network (Bishop 1994): a conditional distribution p(y | x) as a diagonal Gaussian
mixture whose weights, means and log-variances an MLP predicts from x.

The VAE uses one per generated input as a learned cross-modal prior: p(z_target | the other inputs' codes),
fitted to the target's own posterior codes, as unCLIP's prior maps a caption's embedding to an image
embedding. A code drawn from it is one of the target's codes (one style of the digit), where the other
inputs' own posterior only says the class and decodes to an average of the styles.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

MAX_LOGVAR = 8.0  # log-variances are clamped to ±this: exp() stays finite early in training


class MixtureDensity(nn.Module):
    """p(y | x) = Σ_k π_k(x) N(y; μ_k(x), diag σ_k²(x)), with x (B, in_dim) and y (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, components: int, hidden_dim: int = 256) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture density needs >= 1 component, got {components}")
        self.components, self.out_dim = components, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, components * (1 + 2 * out_dim)),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log-weights (B, K) (normalised), means (B, K, D), log-variances (B, K, D)."""
        out = self.net(x)
        k, d = self.components, self.out_dim
        log_weights = torch.log_softmax(out[:, :k], dim=-1)
        means, logvars = out[:, k:].view(-1, k, 2 * d).split(d, dim=-1)
        return log_weights, means, logvars.clamp(-MAX_LOGVAR, MAX_LOGVAR)

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(y | x) per row (B,)."""
        log_weights, means, logvars = self.forward(x)
        per_component = -0.5 * (
            (y[:, None] - means).square() * torch.exp(-logvars) + logvars + math.log(2 * math.pi)
        ).sum(-1)  # (B, K)
        return torch.logsumexp(log_weights + per_component, dim=-1)

    def sample(self, x: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """One draw per row (B, D): a component by its weight, then its mean + temperature · σ · ε
        (temperature 0: the drawn component's mean)."""
        log_weights, means, logvars = self.forward(x)
        weights = log_weights.exp().float().cpu()  # multinomial draws with the CPU generator
        chosen = torch.multinomial(weights, 1, generator=generator).squeeze(1).to(x.device)
        rows = torch.arange(len(chosen), device=x.device)
        mean, logvar = means[rows, chosen], logvars[rows, chosen]
        if temperature == 0.0:
            return mean
        noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
        return mean + temperature * torch.exp(0.5 * logvar) * noise


def fit_mixture_density(
    density: MixtureDensity,
    sources: Callable[[Tensor, torch.Generator | None], Tensor],
    targets: Tensor,
    rows: Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    holdout: float = 0.1,
    seed: int = 0,
) -> float:
    """Fit `density` to targets (N, D) from sources of `rows` (R,) (indices into them), maximising the
    likelihood with AdamW; returns the kept weights' held-out negative log-likelihood per row (NaN:
    nothing fitted).

    sources(index, generator) gives the inputs (len(index), in_dim) of rows `index`: with a generator, a
    training draw (e.g. a random subset of the inputs); with None, as at inference (for the held-out
    rows). A `holdout` share of the rows (at least one; nothing is fitted with fewer than two rows) is
    held out: the weights of the epoch with the best held-out likelihood are kept. Every epoch runs (a
    mixture often sits on a one-mode plateau for a while before it splits, so stopping early would keep
    the plateau). Deterministic for a given `seed`."""
    if len(rows) < 2 or epochs == 0:
        return math.nan
    generator = torch.Generator().manual_seed(seed)
    shuffled = rows[torch.randperm(len(rows), generator=generator).to(rows.device)]
    held_count = max(1, round(holdout * len(rows)))
    held, fitted = shuffled[:held_count], shuffled[held_count:]
    optimizer = torch.optim.AdamW(density.parameters(), lr=learning_rate, weight_decay=1e-4)
    was_training = density.training
    density.train()

    def held_out_nll() -> float:
        with torch.no_grad():
            return float(-density.log_prob(sources(held, None), targets[held]).mean())

    best, best_state = held_out_nll(), copy.deepcopy(density.state_dict())
    with torch.enable_grad():
        for _ in range(epochs):
            order = fitted[torch.randperm(len(fitted), generator=generator).to(rows.device)]
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                loss = -density.log_prob(sources(index, generator), targets[index]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            score = held_out_nll()
            if score < best:
                best, best_state = score, copy.deepcopy(density.state_dict())
    density.load_state_dict(best_state)
    density.train(was_training)
    return best
