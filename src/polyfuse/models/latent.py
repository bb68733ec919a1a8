"""Gaussian posteriors and how several inputs' posteriors are combined (multimodal VAEs).

Every posterior is diagonal Gaussian: mean (B, Z) and log-variance (B, Z). With inputs missing, only the
present inputs' experts take part:

    poe    product of experts with the prior expert N(0, I) (MVAE, Wu & Goodman 2018):
             precision T = 1 + Σ_present exp(-logvar_m),  mean = (Σ_present mean_m · exp(-logvar_m)) / T
           a row with no input present gets the prior itself.
    moe    an equal-weight mixture of the present inputs' posteriors (MMVAE, Shi et al. 2019).
    mopoe  an equal-weight mixture over the non-empty subsets of the present inputs, each subset the
           product of its experts (MoPoE-VAE, Sutter et al. 2021; as there, without the prior expert, so
           its one-input subsets are exactly MoE's components and its full subset is the PoE of the inputs).

A mixture is handled as its components: `components` lists the subsets, and `subset_posterior` gives each
one's Gaussian with a (B,) validity mask (the subset is non-empty and all of it present in the row).

The ELBO averages a term over a row's valid components. Decoding every one of them costs one decoder pass
per component (2^M − 1 for MoPoE over M inputs); `draw_components` instead picks one valid component per
row, uniformly, so that the term of the picked component is an unbiased estimate of the average (MoPoE-VAE's
own training recipe): E_k[f_k] = (1/K_valid) Σ_k f_k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
from torch import Tensor

JOINTS = ("poe", "moe", "mopoe")


@dataclass
class Gaussian:
    """A diagonal Gaussian per row: mean (B, Z), logvar (B, Z)."""

    mean: Tensor
    logvar: Tensor

    def sample(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """mean + temperature · σ · ε (the reparameterisation trick: differentiable in mean and σ)."""
        if temperature == 0.0:
            return self.mean
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + temperature * torch.exp(0.5 * self.logvar) * noise

    def kl_to_standard_normal(self) -> Tensor:
        """KL(N(mean, var) || N(0, I)) per row (B,): ½ Σ (var + mean² − 1 − logvar)."""
        return 0.5 * (self.logvar.exp() + self.mean.square() - 1.0 - self.logvar).sum(-1)


def product_of_experts(experts: list[Gaussian], present: list[Tensor], *, prior: bool) -> Gaussian:
    """The product of the present experts' Gaussians (and of N(0, I) when `prior`), per row.

    experts: Gaussians (B, Z); present: (B,) bool per expert. A row with no expert present (and no prior)
    gets N(0, I), which callers mark invalid."""
    mean0 = experts[0].mean
    precision = torch.full_like(mean0, 1.0 if prior else 0.0)  # the prior expert: mean 0, precision 1
    weighted = torch.zeros_like(mean0)
    for expert, mask in zip(experts, present, strict=True):
        # Missing rows hold padding (even NaN): where() keeps them out of the sums and of the gradient.
        t = torch.where(mask[:, None], torch.exp(-expert.logvar), 0.0)
        precision = precision + t
        weighted = weighted + torch.where(mask[:, None], expert.mean * t, 0.0)
    none = precision == 0  # only when prior=False and no expert is present
    precision = torch.where(none, 1.0, precision)
    return Gaussian(weighted / precision, -torch.log(precision))


def components(joint: str, n_inputs: int, unimodal_elbos: bool = True) -> list[tuple[int, ...]]:
    """The subsets of inputs (by position) whose posteriors the ELBO averages over.

    poe: the full set (plus each single input when `unimodal_elbos`, MVAE's training recipe, which is what
    lets a PoE model generate from one input); moe: each single input; mopoe: every non-empty subset."""
    if joint not in JOINTS:
        raise ValueError(f"joint must be one of {JOINTS}, got {joint!r}")
    full = tuple(range(n_inputs))
    singles: list[tuple[int, ...]] = [(i,) for i in range(n_inputs)]
    if joint == "poe":
        return [full] + (singles if unimodal_elbos and n_inputs > 1 else [])
    if joint == "moe":
        return singles
    return [s for k in range(1, n_inputs + 1) for s in combinations(full, k)]


def subset_posterior(
    joint: str, experts: list[Gaussian], present: list[Tensor], subset: tuple[int, ...]
) -> tuple[Gaussian, Tensor]:
    """The Gaussian of one component and where it is valid (B,) bool.

    poe: the product of the subset's present experts and the prior; valid where one of them is present
    (the full set is thus the joint posterior of whatever the row has). moe / mopoe: the product of the
    subset's experts without the prior; valid only where every one of them is present, so a row's mixture
    runs over the subsets of its present inputs and nothing else."""
    chosen = [experts[i] for i in subset]
    masks = [present[i] for i in subset]
    stacked = torch.stack(masks, dim=1)  # (B, |S|)
    if joint == "poe":
        return product_of_experts(chosen, masks, prior=True), stacked.any(1)
    return product_of_experts(chosen, masks, prior=False), stacked.all(1)


def joint_posterior(
    joint: str, experts: list[Gaussian], present: list[Tensor]
) -> tuple[list[Gaussian], Tensor]:
    """The joint posterior given every present input, as mixture components and their weights.

    Returns (components, weights (B, K)): poe has one component (weight 1 where any input is present);
    moe / mopoe have one per input / subset, weighted equally over the valid ones (rows sum to 1, or 0
    where nothing is present)."""
    if joint == "poe":
        gaussian, valid = subset_posterior("poe", experts, present, tuple(range(len(experts))))
        return [gaussian], valid[:, None].float()
    parts = [subset_posterior(joint, experts, present, s) for s in components(joint, len(experts))]
    valid = torch.stack([v for _, v in parts], dim=1).float()  # (B, K)
    weights = valid / valid.sum(1, keepdim=True).clamp(min=1.0)
    return [g for g, _ in parts], weights


def draw_components(valid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B,) long: one component per row, drawn uniformly among its valid ones (valid: (B, K) bool). A row
    with none gets component 0 (callers mask it out)."""
    weights = valid.float()
    weights[:, 0] = torch.where(valid.any(1), weights[:, 0], 1.0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def pick(parts: list[Gaussian], choice: Tensor) -> Gaussian:
    """The Gaussian of component choice[b] for each row b: mean and logvar (B, Z)."""
    means = torch.stack([p.mean for p in parts], dim=1)  # (B, K, Z)
    logvars = torch.stack([p.logvar for p in parts], dim=1)
    rows = torch.arange(means.shape[0], device=means.device)
    return Gaussian(means[rows, choice], logvars[rows, choice])


def sample_mixture(
    parts: list[Gaussian], weights: Tensor, temperature: float, generator: torch.Generator | None
) -> Tensor:
    """One z per row (B, Z): a component drawn by `weights` (B, K), then a sample of it. With temperature
    0 a mixture gives the mean of its chosen component (a PoE: its mean)."""
    if len(parts) == 1:
        return parts[0].sample(temperature, generator)
    safe = torch.where(weights.sum(1, keepdim=True) > 0, weights, 1.0)
    choice = torch.multinomial(safe, 1, generator=generator).squeeze(1)  # (B,)
    return pick(parts, choice).sample(temperature, generator)


def fit_gaussian_mixture(
    points: Tensor, components: int, iterations: int = 100, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """A diagonal Gaussian mixture fitted to points (N, Z) by EM from a k-means++ start (deterministic
    given `seed`). Returns weights (K,), means (K, Z), log-variances (K, Z); with fewer points than
    components the extra components get weight 0. Variances are floored at 1e-3 of the points' own, so a
    component on one point does not collapse."""
    x = points.double()
    n, dim = x.shape
    k = min(components, n)
    generator = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(n, (), generator=generator))]]
    for _ in range(1, k):  # k-means++: each next centre drawn in proportion to its squared distance
        distance = torch.cdist(x, torch.stack(centres)).square().amin(1)
        if float(distance.sum()) == 0.0:
            centres.append(centres[-1])
            continue
        centres.append(x[int(torch.multinomial(distance, 1, generator=generator))])
    means = torch.stack(centres)  # (k, Z)
    floor = 1e-3 * x.var(0, unbiased=False).clamp(min=1e-12)  # (Z,)
    variances = x.var(0, unbiased=False).clamp(min=1e-12).expand(k, dim).clone()
    weights = torch.full((k,), 1.0 / k, dtype=x.dtype)
    for _ in range(iterations):
        # E step: log N(x | μ_k, diag σ_k²) + log π_k  (N, k)
        log_p = (
            -0.5
            * (
                ((x[:, None, :] - means[None]) ** 2 / variances[None]).sum(-1)
                + torch.log(variances).sum(-1)[None]
                + dim * math.log(2 * math.pi)
            )
            + torch.log(weights.clamp(min=1e-300))[None]
        )
        resp = torch.softmax(log_p, dim=1)  # (N, k)
        # M step
        mass = resp.sum(0).clamp(min=1e-12)  # (k,)
        weights = mass / n
        means = (resp.T @ x) / mass[:, None]
        variances = torch.maximum((resp.T @ x.square()) / mass[:, None] - means.square(), floor)
    pad = components - k
    weights = torch.cat([weights, weights.new_zeros(pad)])
    means = torch.cat([means, means.new_zeros(pad, dim)])
    log_variances = torch.cat([torch.log(variances), variances.new_zeros(pad, dim)])
    return weights.float(), means.float(), log_variances.float()
