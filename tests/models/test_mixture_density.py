"""The mixture density network behind the VAE's cross-modal priors: its density, its draws, and that it
learns a conditional with two modes (where a mean, like a decoder's average of styles, lies between them)."""

from __future__ import annotations

import pytest
import torch
from torch import distributions as D

from polyfuse.models.mixture_density import MixtureDensity


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
