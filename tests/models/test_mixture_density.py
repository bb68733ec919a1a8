"""The mixture density network behind the VAE's cross-modal priors: its density, its draws, and that it
learns a conditional with two modes (where a mean, like a decoder's average of styles, lies between them)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from polyfuse.models.mixture_density import MixtureDensity, fit_mixture_density


def test_log_prob_is_that_of_the_predicted_gaussian_mixture() -> None:
    torch.manual_seed(0)
    mdn = MixtureDensity(in_dim=3, out_dim=2, components=4, hidden_dim=8)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    log_weights, means, logvars = mdn(x)
    assert log_weights.shape == (5, 4) and means.shape == logvars.shape == (5, 4, 2)
    assert torch.allclose(log_weights.exp().sum(-1), torch.ones(5))
    expected = D.MixtureSameFamily(
        D.Categorical(logits=log_weights),
        D.Independent(D.Normal(means, torch.exp(0.5 * logvars)), 1),
    ).log_prob(y)
    assert torch.allclose(mdn.log_prob(x, y), expected, atol=1e-5)


def test_one_component_with_known_outputs_gives_the_gaussian_density_by_hand() -> None:
    mdn = MixtureDensity(in_dim=1, out_dim=1, components=1, hidden_dim=2)
    last = mdn.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.3, 1.0, 2 * torch.log(torch.tensor(2.0)).item()]))  # μ 1, σ 2
    value = mdn.log_prob(torch.zeros(1, 1), torch.tensor([[4.0]]))
    # log N(4; 1, 2²) = −½ (9/4) − log 2 − ½ log 2π
    assert value.item() == pytest.approx(-1.125 - 0.693147 - 0.918939, abs=1e-5)


def test_draws_follow_the_weights_and_temperature_zero_gives_a_components_mean() -> None:
    mdn = MixtureDensity(in_dim=1, out_dim=1, components=2, hidden_dim=2)
    last = mdn.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # weights ¾ / ¼, means −3 / +3, log-variances −4 / −4
        last.weight.zero_()
        last.bias.copy_(torch.tensor([torch.log(torch.tensor(3.0)).item(), 0.0, -3.0, -4.0, 3.0, -4.0]))
    x = torch.zeros(2000, 1)
    drawn = mdn.sample(x, 1.0, torch.Generator().manual_seed(0))
    assert (drawn < 0).float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert drawn[drawn < 0].std().item() == pytest.approx(torch.exp(torch.tensor(-2.0)).item(), rel=0.1)
    means = mdn.sample(x[:50], 0.0, torch.Generator().manual_seed(1))
    assert set(means.flatten().tolist()) <= {-3.0, 3.0}
    same = mdn.sample(x[:50], 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(same, mdn.sample(x[:50], 1.0, torch.Generator().manual_seed(1)))  # seeded


def test_it_learns_two_modes_per_condition_where_the_mean_lies_between_them() -> None:
    """y given class c is 1.5 (c − 1) ± 0.5 with equal odds (unit scale, as a VAE's codes): a regression to
    the mean would answer 1.5 (c − 1), which is neither; the mixture's draws land on the two modes."""
    torch.manual_seed(0)
    classes = torch.randint(0, 3, (512,))
    x = torch.nn.functional.one_hot(classes, 3).float()
    sign = torch.where(torch.rand(512) < 0.5, -1.0, 1.0)
    y = (1.5 * (classes - 1) + 0.5 * sign + 0.05 * torch.randn(512))[:, None]
    mdn = MixtureDensity(in_dim=3, out_dim=1, components=4, hidden_dim=32)
    optimiser = torch.optim.Adam(mdn.parameters(), lr=3e-3)
    for _ in range(600):
        optimiser.zero_grad()
        (-mdn.log_prob(x, y).mean()).backward()
        optimiser.step()
    condition = torch.nn.functional.one_hot(torch.full((400,), 2), 3).float()  # class 2: modes 1 and 2
    with torch.no_grad():
        drawn = mdn.sample(condition, 1.0, torch.Generator().manual_seed(0)).squeeze(1)
    assert ((drawn - 1.0).abs() < 0.25).float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert ((drawn - 2.0).abs() < 0.25).float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert ((drawn - 1.5).abs() < 0.25).float().mean().item() < 0.05  # not the mean of the two


def _two_modes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: one-hot class of 3; y | c = 1.5 (c − 1) ± 0.5 with equal odds (as in the test above)."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 3, (n,), generator=generator)
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    y = 1.5 * (classes - 1) + 0.5 * sign + 0.05 * torch.randn(n, generator=generator)
    return torch.nn.functional.one_hot(classes, 3).float(), y[:, None]


def test_fit_mixture_density_learns_the_modes_and_calls_sources_for_training_and_held_out_rows() -> None:
    torch.manual_seed(0)
    x, y = _two_modes(600, seed=1)
    mdn = MixtureDensity(in_dim=3, out_dim=1, components=4, hidden_dim=32)
    calls = {"training": 0, "held_out": 0}

    def sources(index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        calls["training" if generator is not None else "held_out"] += 1
        return x[index]

    rows = torch.arange(500)  # the last 100 rows are never shown to it
    before = -mdn.log_prob(x[500:], y[500:]).mean().item()
    held_out = fit_mixture_density(mdn, sources, y, rows, epochs=150, learning_rate=3e-3, batch_size=64)
    after = -mdn.log_prob(x[500:], y[500:]).mean().item()
    assert after < before - 1.0 and held_out < -0.5  # a point mass on a mode and a ~0.05 scale: < 0
    assert calls["held_out"] == 151  # once before fitting, once per epoch
    assert calls["training"] == 150 * 8  # 450 fitted rows in batches of 64
    condition = torch.nn.functional.one_hot(torch.full((400,), 0), 3).float()  # class 0: modes −2, −1
    with torch.no_grad():
        drawn = mdn.sample(condition, 1.0, torch.Generator().manual_seed(0)).squeeze(1)
    assert ((drawn + 2.0).abs() < 0.25).float().mean().item() == pytest.approx(0.5, abs=0.12)
    assert ((drawn + 1.5).abs() < 0.2).float().mean().item() < 0.1  # not the mean of the two


def test_fit_mixture_density_keeps_the_best_held_out_epoch() -> None:
    torch.manual_seed(0)
    x, y = _two_modes(200, seed=2)
    mdn = MixtureDensity(in_dim=3, out_dim=1, components=2, hidden_dim=8)
    start = {k: v.clone() for k, v in mdn.state_dict().items()}

    def sources(index: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x[index]

    # a learning rate this large only makes it worse: the weights it started with are kept
    held_out = fit_mixture_density(mdn, sources, y, torch.arange(200), epochs=5, learning_rate=50.0)
    assert all(torch.equal(v, start[k]) for k, v in mdn.state_dict().items())
    assert held_out > -mdn.log_prob(x, y).mean().item() - 1.0  # the held-out rows' NLL at the start
    assert math.isnan(fit_mixture_density(mdn, sources, y, torch.arange(200), epochs=0))
    assert math.isnan(fit_mixture_density(mdn, sources, y, torch.arange(1), epochs=5))  # nothing held out

    # deterministic for a seed
    a, b = MixtureDensity(3, 1, 2, 8), MixtureDensity(3, 1, 2, 8)
    b.load_state_dict(a.state_dict())
    for density in (a, b):
        fit_mixture_density(density, sources, y, torch.arange(200), epochs=3, seed=5)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
