"""Registry-wide tests of the fusions: every fusion in `list_fusions()` gets every check."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from polyfuse.models.fusion import GatedFusion, create_fusion, list_fusions, modality_dropout
from polyfuse.models.fusion.missing import MissingModalityEmbedding, module_key
from polyfuse.models.outputs import EncoderOutput

DIMS = {"image": 32, "audio": 24, "numeric": 8}
LENGTHS = {"image": 4, "audio": 7, "numeric": 1}
OUT = 6
# small sizes keep the whole file within seconds on two CPU cores
SMALL: dict[str, dict[str, int]] = {
    "concat": {"hidden_dim": 32},
    "tensor": {"proj_dim": 4, "hidden_dim": 32},
    "cross_attention": {"d_model": 16, "num_heads": 2},
    "film": {"d_model": 16, "blocks": 1},
    "transformer": {"d_model": 16, "num_heads": 2, "num_layers": 1},
}
FUSIONS = list_fusions()


def make_fusion(name: str, dims: dict[str, int] | None = None, out: int = OUT, **kwargs: float) -> nn.Module:
    torch.manual_seed(0)
    fusion = create_fusion(name, dims or DIMS, out, **{**SMALL.get(name, {}), **kwargs})
    assert isinstance(fusion, nn.Module)
    return fusion


def make_features(batch: int, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, EncoderOutput]:
    """Random encoder outputs; audio has variable lengths (1..7 valid frames), pooled = masked mean."""
    g = torch.Generator().manual_seed(seed)
    features = {}
    for name, d in (dims or DIMS).items():
        t = LENGTHS.get(name, 3)
        tokens = torch.randn(batch, t, d, generator=g)  # (B, T, D)
        lengths = (
            torch.randint(1, t + 1, (batch,), generator=g) if name == "audio" else torch.full((batch,), t)
        )
        mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        features[name] = EncoderOutput(tokens, mask, pooled)
    return features


def every_combination(batch: int = 8, names: list[str] | None = None) -> dict[str, Tensor]:
    """Row i has input j iff bit j of i is set: row 0 has nothing, row 7 everything, every input is present
    in some rows and absent in others."""
    rows = torch.arange(batch)
    return {name: (rows >> j) % 2 == 1 for j, name in enumerate(sorted(names or DIMS))}


def with_garbage(
    features: dict[str, EncoderOutput], present: dict[str, Tensor], value: float | None, seed: int = 1
) -> dict[str, EncoderOutput]:
    """Overwrite everything in absent rows (tokens, pooled and the token mask) with garbage: random values
    when value is None, else the constant value (huge, inf, NaN). Padding of present rows gets it too."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, f in features.items():
        absent = ~present[name]
        tokens_garbage = (
            torch.randn(f.tokens.shape, generator=g) * 100
            if value is None
            else torch.full_like(f.tokens, value)
        )
        pooled_garbage = (
            torch.randn(f.pooled.shape, generator=g) * 100
            if value is None
            else torch.full_like(f.pooled, value)
        )
        invalid = absent[:, None] | ~f.token_mask  # (B, T): absent rows and padding of present rows
        tokens = torch.where(invalid[..., None], tokens_garbage, f.tokens)
        pooled = torch.where(absent[:, None], pooled_garbage, f.pooled)
        random_mask = torch.rand(f.token_mask.shape, generator=g) < 0.5
        random_mask[0] = False  # some absent rows with an all-False mask
        mask = torch.where(absent[:, None], random_mask, f.token_mask)
        out[name] = EncoderOutput(tokens, mask, pooled)
    return out


# ---------------------------------------------------------------- registry


def test_registry_lists_every_fusion() -> None:
    assert FUSIONS == ["concat", "cross_attention", "film", "gated", "lowrank", "tensor", "transformer"]
    assert list_fusions("*attention*") == ["cross_attention"]
    assert list_fusions("nope*") == []


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(
        ValueError, match="unknown fusion 'nope'; choices: concat, cross_attention, film, gated"
    ):
        create_fusion("nope", DIMS, OUT)


def test_unknown_option_lists_options() -> None:
    with pytest.raises(
        ValueError, match=r"fusion 'concat'.*options are: hidden_dim, dropout, modality_dropout"
    ):
        create_fusion("concat", DIMS, OUT, hiden_dim=3)


def test_tensor_fusion_size_guard() -> None:
    many = {f"x{i}": 4 for i in range(7)}  # (8 + 1) ** 7 = 4,782,969 > 1,000,000
    with pytest.raises(ValueError, match=r"4,782,969 features.*'lowrank'"):
        create_fusion("tensor", many, OUT)
    create_fusion("lowrank", many, OUT)  # the suggested fix works


def test_wrong_inputs_name_the_expected_ones() -> None:
    fusion = make_fusion("concat")
    features, present = make_features(4), every_combination(4)
    del features["audio"]
    with pytest.raises(ValueError, match=r"fusion inputs are \['audio', 'image', 'numeric'\]"):
        fusion(features, present)


# ---------------------------------------------------------------- every fusion


@pytest.mark.parametrize("name", FUSIONS)
def test_shape_and_finite(name: str) -> None:
    fusion = make_fusion(name)
    features, present = make_features(8), every_combination(8)
    for mode in (True, False):
        fusion.train(mode)
        out = fusion(features, present)
        assert out.shape == (8, OUT)
        assert torch.isfinite(out).all()
    assert fusion.output_dim == OUT


@pytest.mark.parametrize("name", FUSIONS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    """Each input is present in some rows and absent in others (row 0 has none), so the missing-input
    stand-ins must get gradient too; NaN garbage in absent slots must not reach any gradient."""
    fusion = make_fusion(name, dropout=0.0)
    fusion.train()
    present = every_combination(8)
    features = with_garbage(make_features(8), present, float("nan"))
    fusion(features, present).sum().backward()
    for pname, p in fusion.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", FUSIONS)
def test_no_unregistered_tensors(name: str) -> None:
    """Trainable tensors must be parameters (MultiBench's LMF kept its factors in a plain list)."""
    fusion = make_fusion(name)
    leaks = []
    for mod_name, mod in fusion.named_modules():
        for attr, value in vars(mod).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            values = list(value.values()) if isinstance(value, dict) else value
            for v in values if isinstance(values, list | tuple) else [values]:
                if isinstance(v, Tensor | nn.Module):
                    leaks.append(f"{mod_name}.{attr}")
    assert leaks == []
    assert set(fusion.state_dict()) >= {n for n, _ in fusion.named_parameters()}


@pytest.mark.parametrize("name", FUSIONS)
@pytest.mark.parametrize(
    "garbage", [None, 1e30, float("inf"), float("nan")], ids=["random", "huge", "inf", "nan"]
)
def test_absent_slot_does_not_matter(name: str, garbage: float | None) -> None:
    fusion = make_fusion(name).eval()
    features, present = make_features(8), every_combination(8)
    with torch.no_grad():
        clean = fusion(features, present)
        dirty = fusion(with_garbage(features, present, garbage), present)
    assert torch.isfinite(dirty).all()
    for row in range(8):
        assert torch.allclose(clean[row], dirty[row], atol=1e-5), f"row {row} changed"


@pytest.mark.parametrize("name", FUSIONS)
def test_rows_are_independent(name: str) -> None:
    fusion = make_fusion(name).eval()
    features, present = make_features(8), every_combination(8)
    with torch.no_grad():
        batch = fusion(features, present)
        for row in (0, 3, 5, 7):
            one = {
                n: EncoderOutput(
                    f.tokens[row : row + 1], f.token_mask[row : row + 1], f.pooled[row : row + 1]
                )
                for n, f in features.items()
            }
            alone = fusion(one, {n: p[row : row + 1] for n, p in present.items()})
            assert torch.allclose(alone[0], batch[row], atol=1e-5), f"row {row} depends on the batch"


@pytest.mark.parametrize("name", FUSIONS)
def test_rows_with_nothing_present_are_finite(name: str) -> None:
    fusion = make_fusion(name)
    present = {n: torch.zeros(5, dtype=torch.bool) for n in DIMS}
    features = with_garbage(make_features(5), present, float("nan"))
    for mode in (True, False):
        out = fusion.train(mode)(features, present)
        assert out.shape == (5, OUT)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_any_number_of_inputs_and_awkward_names(name: str) -> None:
    """One input (cross-attention attends to itself), and column names that are not module keys."""
    for dims in ({"audio": 24}, {"a.b": 5, "type": 3, "%": 4, "": 2}):
        fusion = make_fusion(name, dims)
        present = every_combination(8, list(dims))
        out = fusion(make_features(8, dims=dims), present)
        assert out.shape == (8, OUT)
        assert torch.isfinite(out).all()
    assert len({module_key(n) for n in ("a.b", "a%2Eb", "type", "%type", "", "%")}) == 6


@pytest.mark.parametrize("name", FUSIONS)
def test_modality_dropout_only_while_training(name: str) -> None:
    fusion = make_fusion(name, dropout=0.0, modality_dropout=1.0)
    reference = make_fusion(name, dropout=0.0)
    reference.load_state_dict(fusion.state_dict())
    reference.eval()
    features, present = make_features(8), every_combination(8)
    with torch.no_grad():
        # eval: inactive, same as no modality dropout
        assert torch.allclose(fusion.eval()(features, present), reference(features, present), atol=1e-5)
        # train: exactly the masks modality_dropout draws from the same seed
        torch.manual_seed(123)
        dropped_out = fusion.train()(features, present)
        torch.manual_seed(123)
        dropped = modality_dropout(present, 1.0, training=True)
        assert torch.allclose(dropped_out, reference(features, dropped), atol=1e-5)
        assert not torch.allclose(dropped_out, reference(features, present), atol=1e-5)


# ---------------------------------------------------------------- modality dropout and gates


def test_modality_dropout_keeps_one_input_per_row() -> None:
    present = every_combination(8)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        dropped = modality_dropout(present, 1.0, g, training=True)
        kept = torch.stack([dropped[n] for n in sorted(DIMS)], 1)  # (B, M)
        had = torch.stack([present[n] for n in sorted(DIMS)], 1)
        assert (kept <= had).all()  # only present inputs are kept
        assert kept[0].sum() == 0  # a row with nothing stays empty
        assert (kept[1:].sum(1) == 1).all()  # every other row keeps exactly one
    for p in (0.0, 0.5):
        assert modality_dropout(present, p, training=False) == present
    same = modality_dropout(present, 0.0, training=True)
    assert all(torch.equal(same[n], present[n]) for n in DIMS)
    big = {n: torch.ones(10_000, dtype=torch.bool) for n in DIMS}
    half = modality_dropout(big, 0.5, torch.Generator().manual_seed(0), training=True)
    kept = torch.stack(list(half.values()), 1)
    assert (kept.sum(1) >= 1).all()
    assert 0.5 < kept.float().mean() < 0.6  # 0.5 dropped, plus the rescued 1/8 of rows: about 0.54
    with pytest.raises(ValueError, match="must be in"):
        modality_dropout(present, 1.5, training=True)


def test_gate_weights_cover_present_inputs_only() -> None:
    fusion = make_fusion("gated").eval()
    assert isinstance(fusion, GatedFusion)
    features, present = make_features(8), every_combination(8)
    with torch.no_grad():
        weights = fusion.gate_weights(features, present)  # (B, M)
    had = torch.stack([present[n] for n in sorted(DIMS)], 1)
    assert weights.shape == (8, 3)
    assert torch.allclose(weights.sum(1), torch.ones(8))
    assert (weights[1:][~had[1:]] == 0).all()
    assert (weights[1:][had[1:]] > 0).all()
    assert (weights[0] > 0).all()  # nothing present: the stand-ins share the weight


def test_missing_embedding_fills_only_absent_rows() -> None:
    missing = MissingModalityEmbedding(DIMS)
    present = every_combination(8)
    features = with_garbage(make_features(8), present, float("nan"))
    pooled = missing.fill_pooled(features, present)
    tokens = missing.fill_tokens(features, present)
    for n in DIMS:
        absent = ~present[n]
        assert torch.equal(pooled[n][~absent], features[n].pooled[~absent])
        assert torch.equal(pooled[n][absent], missing.vector(n).detach().expand(int(absent.sum()), -1))
        assert torch.isfinite(tokens[n].tokens).all()
        assert (tokens[n].mask[absent, 0]).all() and not tokens[n].mask[absent, 1:].any()
        assert torch.equal(tokens[n].mask[~absent], features[n].token_mask[~absent])


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("name", FUSIONS)
def test_learns_a_task_that_needs_two_inputs(name: str) -> None:
    """label = sign(image feature 0) xor sign(audio feature 0), carried by every token; numeric is noise."""
    n, g = 128, torch.Generator().manual_seed(0)
    features = make_features(n, seed=2)
    sign_a = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    sign_b = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    for key, sign in (("image", sign_a), ("audio", sign_b)):
        f = features[key]
        f.tokens[..., 0] += 2.0 * sign[:, None]
        f.pooled = (f.tokens * f.token_mask[..., None]).sum(1) / f.token_mask.sum(1, keepdim=True)
    labels = (sign_a != sign_b).long()
    present = {k: torch.ones(n, dtype=torch.bool) for k in DIMS}

    fusion = make_fusion(name, out=16, dropout=0.0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    params = [*fusion.parameters(), *model.parameters()]
    optim = torch.optim.Adam(params, lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(fusion(features, present)), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
    fusion.eval()
    with torch.no_grad():
        accuracy = (model(fusion(features, present)).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, f"{name}: train accuracy {accuracy:.2f} after 150 steps"
