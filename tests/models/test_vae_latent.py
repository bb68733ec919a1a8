"""The joint posteriors of the multimodal VAE on fixed tensors: golden numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from polyfuse.models.latent import (
    Gaussian,
    components,
    draw_components,
    joint_posterior,
    pick,
    product_of_experts,
    subset_posterior,
)


def experts() -> tuple[list[Gaussian], list[torch.Tensor]]:
    """Two rows, two inputs, Z = 1. Input a: mean 2, variance 1; input b: mean −1, variance 1/3 (precision 3).
    Row 0 has both inputs; row 1 lacks b (its b values are junk, even NaN, and must not leak)."""
    a = Gaussian(torch.tensor([[2.0], [2.0]]), torch.zeros(2, 1))
    b = Gaussian(torch.tensor([[-1.0], [float("nan")]]), torch.tensor([[math.log(1 / 3)], [float("nan")]]))
    present = [torch.tensor([True, True]), torch.tensor([True, False])]
    return [a, b], present


def test_product_of_experts_with_prior_matches_hand_computation() -> None:
    parts, present = experts()
    joint = product_of_experts(parts, present, prior=True)
    # row 0: precision 1 (prior) + 1 + 3 = 5; mean (0·1 + 2·1 + (−1)·3) / 5 = −0.2
    # row 1: b dropped → precision 1 + 1 = 2; mean 2 / 2 = 1
    assert joint.mean[:, 0].tolist() == pytest.approx([-0.2, 1.0])
    assert joint.logvar.exp()[:, 0].tolist() == pytest.approx([0.2, 0.5])


def test_dropping_an_input_changes_poe_exactly_as_the_rule_says() -> None:
    parts, present = experts()
    both = product_of_experts(parts, present, prior=True)
    only_a = product_of_experts(parts, [present[0], torch.tensor([False, False])], prior=True)
    # with b gone, row 0 is row 1: N(1, 1/2); the precision lost is exactly b's precision, 3
    assert only_a.mean[0, 0].item() == pytest.approx(1.0)
    assert (1 / both.logvar.exp()[0, 0] - 1 / only_a.logvar.exp()[0, 0]).item() == pytest.approx(3.0)


def test_no_input_present_gives_the_prior_under_poe() -> None:
    parts, _ = experts()
    none = [torch.tensor([False, False])] * 2
    joint = product_of_experts(parts, none, prior=True)
    assert joint.mean.abs().max().item() == 0.0 and joint.logvar.abs().max().item() == 0.0


def test_moe_mixes_only_present_inputs_with_equal_weights() -> None:
    parts, present = experts()
    mixture, weights = joint_posterior("moe", parts, present)
    assert weights.tolist() == [[0.5, 0.5], [1.0, 0.0]]  # row 1: b absent → a alone
    assert mixture[0].mean[:, 0].tolist() == [2.0, 2.0]  # the components are the experts themselves
    assert mixture[1].mean[0, 0].item() == -1.0
    assert mixture[1].logvar.exp()[0, 0].item() == pytest.approx(1 / 3)


def test_mopoe_mixes_the_subsets_of_present_inputs() -> None:
    parts, present = experts()
    mixture, weights = joint_posterior("mopoe", parts, present)
    assert components("mopoe", 2) == [(0,), (1,), (0, 1)]
    assert weights.flatten().tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0, 0.0, 0.0])
    # the {a, b} subset is the product without the prior: precision 1 + 3 = 4, mean (2 − 3) / 4
    assert mixture[2].mean[0, 0].item() == pytest.approx(-0.25)
    assert mixture[2].logvar.exp()[0, 0].item() == pytest.approx(0.25)


def test_poe_components_add_unimodal_elbos_only_when_asked() -> None:
    assert components("poe", 2) == [(0, 1), (0,), (1,)]
    assert components("poe", 2, unimodal_elbos=False) == [(0, 1)]
    parts, present = experts()
    _, valid = subset_posterior("poe", parts, present, (1,))
    assert valid.tolist() == [True, False]  # b's own ELBO only where b is present


def test_kl_to_the_prior_is_the_closed_form_and_non_zero() -> None:
    gaussian = Gaussian(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]]))
    # ½ Σ (σ² + μ² − 1 − log σ²) = ½ [(1 + 1 − 1 − 0) + (4 + 0 − 1 − log 4)] = ½ (4 − log 4)
    assert gaussian.kl_to_standard_normal().item() == pytest.approx(0.5 * (4 - math.log(4)))
    assert Gaussian(torch.zeros(1, 3), torch.zeros(1, 3)).kl_to_standard_normal().item() == 0.0


def mopoe_parts(rows: int = 1) -> tuple[list[Gaussian], torch.Tensor]:
    """mopoe's components of experts() for row 0 repeated `rows` times, then row 1; and validity (B, 3)."""
    parts, present = experts()
    index = torch.tensor([0] * rows + [1])
    parts = [Gaussian(p.mean[index], p.logvar[index]) for p in parts]
    present = [m[index] for m in present]
    subsets = [subset_posterior("mopoe", parts, present, s) for s in components("mopoe", 2)]
    return [g for g, _ in subsets], torch.stack([v for _, v in subsets], dim=1)


def test_drawn_subsets_are_valid_ones_and_seeded_draws_are_reproducible() -> None:
    _, valid = mopoe_parts()
    generator = torch.Generator().manual_seed(0)
    draws = [draw_components(valid, generator).tolist() for _ in range(8)]
    # row 0 has both inputs: any of {a}, {b}, {a, b}; row 1 lacks b: only {a} is valid
    assert [d[0] for d in draws] == [2, 0, 0, 2, 0, 2, 1, 1]
    assert [d[1] for d in draws] == [0] * 8


def test_one_drawn_subset_per_row_is_an_unbiased_estimate_of_the_mopoe_average() -> None:
    """E over (subset k ~ uniform on the valid ones, z ~ q_k) of z² equals the average over the valid
    subsets of E_q_k[z²] = μ_k² + σ_k²: for row 0, ({a}: 4 + 1, {b}: 1 + 1/3, {a, b}: 1/16 + 1/4) / 3."""
    rows = 200_000  # the estimate's standard error is then ~0.007
    parts, valid = mopoe_parts(rows)
    generator = torch.Generator().manual_seed(0)
    choice = draw_components(valid, generator)
    z = pick(parts, choice).sample(1.0, generator)  # (rows + 1, 1)
    exact = (5.0 + 4 / 3 + 0.3125) / 3  # 2.2153
    assert z[:rows].square().mean().item() == pytest.approx(exact, abs=0.03)
    assert torch.bincount(choice[:rows], minlength=3).div(rows).tolist() == pytest.approx(
        [1 / 3] * 3, abs=0.005
    )
    # row 1 has {a} alone: its draw is a sample of N(2, 1)
    assert choice[rows].item() == 0
    # a row with no valid subset still gets an index (component 0), which callers mask out
    assert draw_components(torch.zeros(2, 3, dtype=torch.bool)).tolist() == [0, 0]


def test_gaussian_mixture_recovers_two_clusters_and_pads_missing_components() -> None:
    from polyfuse.models.latent import fit_gaussian_mixture

    g = torch.Generator().manual_seed(1)
    left = torch.randn(300, 4, generator=g) * 0.1 + torch.tensor([3.0, 0, 0, 0])
    right = torch.randn(100, 4, generator=g) * 0.2 - torch.tensor([3.0, 0, 0, 0])
    weights, means, logvars = fit_gaussian_mixture(torch.cat([left, right]), 2)
    order = means[:, 0].argsort(descending=True)  # the +3 cluster first
    assert torch.allclose(weights[order], torch.tensor([0.75, 0.25]), atol=1e-4)
    assert torch.allclose(means[order], torch.stack([left.mean(0), right.mean(0)]), atol=1e-3)
    assert torch.allclose(
        logvars[order].exp().sqrt().mean(1), torch.tensor([0.1, 0.2]), atol=0.02
    )  # each cluster's own spread
    weights, means, _ = fit_gaussian_mixture(left[:2], 3)  # fewer points than components
    assert weights.tolist()[2] == 0.0 and abs(sum(weights.tolist()) - 1.0) < 1e-6
