"""The autoencoder and vae objectives on one real batch of the synthetic table (no training loop): losses,
the KL term, missing inputs, anomaly calibration, generation back to images / sound, Griffin-Lim."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polyfuse.data.dataset import MultimodalDataset, make_collate
from polyfuse.data.modalities.audio import AudioConfig, audio_features
from polyfuse.data.modalities.audio_inverse import feature_levels, features_to_waveform
from polyfuse.data.prepare import prepare_data
from polyfuse.generation import to_media
from polyfuse.models.latent import Gaussian, subset_posterior
from polyfuse.models.model import MultimodalModel, build_model
from polyfuse.objectives.reconstruction import ReconstructionBase


class PassThrough(torch.nn.Module):
    def forward(self, mean: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return mean


def _model(
    synthetic_table: Path,
    small_config: Any,
    tmp_path: Path,
    objective: str,
    options: dict[str, Any] | None = None,
) -> tuple[MultimodalModel, Any, Any]:
    config = small_config(synthetic_table, tmp_path / "config.yaml", targets=(), objectives=(objective,))
    config.objectives[0].options.update(options or {})
    prepared = prepare_data(config.data, show_progress=False)
    model = build_model(config, prepared.preprocessor)
    train = prepared.split("train")
    dataset = MultimodalDataset(train, prepared.preprocessor, with_targets=False)
    batch = make_collate(prepared.preprocessor)([dataset[i] for i in range(12)])
    model.objective(objective).fit_data(train, prepared.preprocessor)
    return model, batch, prepared.preprocessor


@pytest.fixture(scope="module")
def vae(
    synthetic_table: Path, small_config: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MultimodalModel, Any, Any]:
    return _model(synthetic_table, small_config, tmp_path_factory.mktemp("vae"), "vae")


def test_vae_loss_has_a_non_zero_kl_and_trains_every_part(vae: tuple[MultimodalModel, Any, Any]) -> None:
    model, batch, _ = vae
    objective: Any = model.objective("vae")
    assert objective.decoded == ["audio", "category", "image", "numeric"]  # text conditions only
    model.train()
    objective.steps.fill_(objective.kl_warmup_steps)  # past the warm-up: β = 1
    losses = model.losses(model(batch), batch)
    assert losses["vae_kl"].item() > 0.01  # MultiBench's MVAE silently had a KL of 0
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    for name in ("posteriors.image.weight", "decoders.audio.out.weight", "decoders.image.log_scale"):
        grad = dict(objective.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()


def test_alignment_pulls_paired_posteriors_together_and_adds_to_the_elbo(
    vae: tuple[MultimodalModel, Any, Any],
) -> None:
    model, _, _ = vae
    objective: Any = model.objective("vae")
    k = len(objective.inputs)
    assert k >= 2 and objective.alignment_weight == 1.0
    heads = objective.alignment_heads
    # the projection heads are trained layers: the golden numbers below are of the InfoNCE itself
    objective.alignment_heads = torch.nn.ModuleDict({key: PassThrough() for key in heads})
    try:
        check_alignment_golden(objective, k)
    finally:
        objective.alignment_heads = heads
    assert set(heads) == {objective.keys[n] for n in objective.inputs}


def check_alignment_golden(objective: Any, k: int) -> None:
    rows = torch.ones(2, dtype=torch.bool)
    present = dict.fromkeys(objective.inputs, rows)
    paired = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised: the identity; cosine logits 10·I
    experts = [Gaussian(paired, torch.zeros(2, 2)) for _ in range(k)]
    # golden: each row's partner has logit 10, the other row 0: CE = log(1 + e^-10) both ways (float32)
    assert objective.alignment(experts, present).item() == pytest.approx(math.log1p(math.exp(-10)), rel=2e-3)
    # the first input's rows swapped: its k - 1 pairs cost log(1 + e^10), the others stay aligned
    experts[0] = Gaussian(paired.flip(0), torch.zeros(2, 2))
    pairs = k * (k - 1) / 2
    expected = ((k - 1) * math.log1p(math.exp(10)) + (pairs - k + 1) * math.log1p(math.exp(-10))) / pairs
    assert objective.alignment(experts, present).item() == pytest.approx(expected, rel=1e-4)
    # a row without the first input leaves its pairs one valid row: they add 0
    present[objective.inputs[0]] = torch.tensor([True, False])
    assert objective.alignment(experts, present).item() == pytest.approx(
        (pairs - k + 1) * math.log1p(math.exp(-10)) / pairs, rel=2e-3
    )


def test_anomaly_score_adds_how_much_the_inputs_disagree(vae: tuple[MultimodalModel, Any, Any]) -> None:
    model, batch, _ = vae
    objective: Any = model.objective("vae")
    k = len(objective.inputs)
    heads = objective.alignment_heads
    objective.alignment_heads = torch.nn.ModuleDict({key: PassThrough() for key in heads})
    try:
        same = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
        experts = [Gaussian(same, torch.zeros(3, 2)) for _ in range(k)]
        experts[0] = Gaussian(torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]]), torch.zeros(3, 2))
        present = dict.fromkeys(objective.inputs, torch.ones(3, dtype=torch.bool))
        present[objective.inputs[1]] = torch.tensor([True, True, False])
        # golden: row 0 agrees everywhere (0); in row 1 the first input is orthogonal to the others (cos 0):
        # its k - 1 pairs cost 1 each; row 2 lacks the second input, the rest agree (0)
        got = objective.disagreement(experts, present)
        assert torch.allclose(got, torch.tensor([0.0, (k - 1) / (k * (k - 1) / 2), 0.0]), atol=1e-6)
        only_one = {n: torch.tensor([n == objective.inputs[0]] * 3) for n in objective.inputs}
        assert torch.equal(objective.disagreement(experts, only_one), torch.zeros(3))
    finally:
        objective.alignment_heads = heads
    # through the row score: −ELBO per value + weight × disagreement
    model.eval()
    with torch.no_grad():
        output = model(batch)
        score = objective.row_loss(output, batch, output.present)
        experts = objective.experts(output)
        nll, kl, _ = objective._elbo_terms(output, batch, output.present, 0.0)
        expected = (nll + kl) / objective.normaliser + objective.disagreement(experts, output.present)
    assert torch.allclose(score, expected, atol=1e-5)
    assert (objective.disagreement(experts, output.present) > 0).any()


def test_alignment_adds_to_the_elbo_and_trains_its_heads(vae: tuple[MultimodalModel, Any, Any]) -> None:
    # through the loss: −ELBO per value + weight · alignment, and 0 weight is the plain ELBO
    model, batch, _ = vae
    objective: Any = model.objective("vae")
    model.train()
    objective.steps.fill_(objective.kl_warmup_steps)
    output = model(batch)
    objective.alignment(objective.experts(output), output.present).backward()
    for name in ("alignment_heads.audio.last.weight", "posteriors.audio.weight", "posteriors.image.weight"):
        grad = dict(objective.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()
    model.eval()
    objective.steps.fill_(objective.kl_warmup_steps)
    with torch.no_grad():
        output = model(batch)
        losses = model.losses(output, batch)
        elbo = (losses["vae_nll"] + objective.beta * losses["vae_kl"]) / objective.normaliser
        assert losses["vae_alignment"].item() > 0
        assert losses["loss"].item() == pytest.approx((elbo + losses["vae_alignment"]).item(), rel=1e-5)
        objective.alignment_weight = 0.0
        try:
            plain = model.losses(output, batch)
        finally:
            objective.alignment_weight = 1.0
    plain_elbo = (plain["vae_nll"] + objective.beta * plain["vae_kl"]) / objective.normaliser  # z resampled
    assert "vae_alignment" not in plain and plain["loss"].item() == pytest.approx(plain_elbo.item(), rel=1e-5)


def test_kl_warm_up_raises_beta_linearly(vae: tuple[MultimodalModel, Any, Any]) -> None:
    objective: Any = vae[0].objective("vae")
    objective.steps.fill_(0)
    assert objective.current_beta() == 0.0
    warmup = objective.kl_warmup_steps  # init sizes it to the table (a quarter of the run), odd or even
    assert warmup >= 3
    for steps in (warmup // 3, warmup // 2, warmup - 1):
        objective.steps.fill_(steps)
        assert objective.current_beta() == pytest.approx(objective.beta * steps / warmup)
    objective.steps.fill_(10 * warmup)
    assert objective.current_beta() == objective.beta == 1.0


def test_a_missing_input_leaves_the_elbo_and_only_that_term(vae: tuple[MultimodalModel, Any, Any]) -> None:
    model, batch, _ = vae
    objective: Any = model.objective("vae")
    model.eval()
    with torch.no_grad():
        output = model(batch)
        full = objective.row_loss(output, batch, output.present)
        without_image = dict(output.present, image=torch.zeros_like(output.present["image"]))
        dropped = objective.row_loss(output, batch, without_image)
        # image values are then neither encoded nor scored: garbage there changes nothing
        saved = batch.inputs["image"].values.clone()
        batch.inputs["image"].values.normal_()
        garbage = objective.row_loss(model(batch), batch, without_image)
        batch.inputs["image"].values.copy_(saved)
    had_image = output.present["image"]
    assert not torch.allclose(full[had_image], dropped[had_image])
    assert torch.allclose(dropped, garbage)


def test_mopoe_decodes_one_drawn_subset_per_step_and_estimates_the_full_average(
    vae: tuple[MultimodalModel, Any, Any],
) -> None:
    model, batch, _ = vae
    objective: Any = model.objective("vae")
    assert objective.joint == "mopoe" and len(objective.components) == 31 and objective.sample_subsets
    calls = []
    hook = objective.decoder("image").register_forward_hook(lambda *_: calls.append(1))
    model.eval()  # frozen batch-norm statistics: only the drawn subsets differ between the calls below
    try:
        with torch.no_grad():
            output = model(batch)
            present = output.present
            exact_nll, exact_kl, _ = objective._elbo_terms(output, batch, present, 0.0)
            assert len(calls) == 31  # every subset decoded
            generator = torch.Generator().manual_seed(0)
            draws = [objective._elbo_terms(output, batch, present, 0.0, True, generator) for _ in range(100)]
            assert len(calls) == 31 + 100  # one decoder pass per step
            one = {n: p if n == "image" else torch.zeros_like(p) for n, p in present.items()}
            alone = objective._elbo_terms(output, batch, one, 0.0)[0]
            alone_drawn = objective._elbo_terms(output, batch, one, 0.0, True, generator)[0]
    finally:
        hook.remove()
    # the KL is the exact average over the row's subsets either way (no decoding needed for it)
    assert all(torch.equal(kl, exact_kl) for _, kl, _ in draws)
    # with the image alone, {image} is the only valid subset: drawing changes nothing
    assert torch.allclose(alone_drawn, alone)
    # each row's drawn NLL is exactly that of one of its valid subsets, and they average to the mean over
    # all of them (the per-subset NLLs spread over a few hundred nats per row here)
    per_subset, valid = subset_nlls(objective, output, batch)
    for nll, _, _ in draws:
        matches = torch.isclose(nll[:, None], per_subset, rtol=1e-5) & valid  # (B, K)
        assert matches.any(1).all()
    assert torch.allclose(torch.where(valid, per_subset, 0.0).sum(1) / valid.sum(1), exact_nll, rtol=1e-5)
    spread = torch.where(valid, per_subset, -math.inf).amax(1) - torch.where(
        valid, per_subset, math.inf
    ).amin(1)
    estimate = torch.stack([nll for nll, _, _ in draws]).mean(0)
    assert ((estimate - exact_nll).abs() < 0.2 * spread).all()


def subset_nlls(objective: Any, output: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted NLL at each subset posterior's mean (B, K) and where the subset is valid (B, K)."""
    experts = objective.experts(output)
    masks = [output.present[n] for n in objective.inputs]
    nlls, valid = [], []
    with torch.no_grad():
        for subset in objective.components:
            posterior, ok = subset_posterior(objective.joint, experts, masks, subset)
            nlls.append(objective._weighted_nll(posterior.mean, batch, output.present))
            valid.append(ok)
    return torch.stack(nlls, 1), torch.stack(valid, 1)


def test_calibration_flags_the_chosen_share_of_validation_rows(vae: tuple[MultimodalModel, Any, Any]) -> None:
    model, batch, _ = vae
    objective: ReconstructionBase = model.objective("vae")  # type: ignore[assignment]
    model.eval()
    with torch.no_grad():
        rows = objective.eval_rows(model(batch), batch)
    objective.false_alarm_rate = 0.25
    objective.calibrate(rows)
    scores = rows["anomaly_score"]
    assert float(objective.anomaly_threshold) == pytest.approx(float(torch.quantile(scores.double(), 0.75)))
    with torch.no_grad():
        flags = objective.anomaly_rows(model(batch), batch)["anomaly"]
    assert flags.sum().item() == 3  # 12 rows, 25 %
    metrics = objective.score(rows)["vae"]
    assert {"image_mse", "audio_mse", "image_mse_from_others", "numeric_mse", "category_error_rate"} <= set(
        metrics
    )


def test_generation_gives_images_and_sound(vae: tuple[MultimodalModel, Any, Any]) -> None:
    model, _, preprocessor = vae
    objective: Any = model.objective("vae")
    model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        images = to_media(
            objective, "image", objective.generate(None, "image", 3, 1.0, generator), preprocessor
        )
        clips = to_media(
            objective, "audio", objective.generate(None, "audio", 2, 1.0, generator), preprocessor
        )
        numbers = to_media(
            objective, "numeric", objective.generate(None, "numeric", 1, 1.0, generator), preprocessor
        )
    size = preprocessor.state.config.image.size
    assert len(images) == 3 and images[0].size == (size[1], size[0])
    assert len(clips) == 2 and clips[0].dtype == np.float32 and clips[0].ndim == 1 and len(clips[0]) > 0
    assert set(numbers[0]) == set(preprocessor.numeric_columns)


def test_autoencoder_loss_is_the_weighted_squared_error(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    model, batch, _ = _model(synthetic_table, small_config, tmp_path, "autoencoder")
    objective: Any = model.objective("autoencoder")
    model.eval()
    with torch.no_grad():
        output = model(batch)
        z = objective.code(output.fused)
        image = objective.decoder("image")
        raw = image(z)
        # the mean is squashed into the pixels' range: 0..255 is -1..1 after the default normalisation
        mean = image.mean(raw)
        assert torch.allclose(mean, 2 * torch.sigmoid(raw) - 1)
        expected = ((mean - batch.inputs["image"].values) ** 2).sum((1, 2, 3))
        got = image.distortion(raw, batch.inputs["image"])
        losses = model.losses(output, batch)
    present = batch.inputs["image"].present
    assert torch.allclose(got[present], expected[present])
    assert losses["loss"].item() > 0
    with pytest.raises(ValueError, match="no prior"):
        objective.generate(None, "image", 2)


def test_griffin_lim_brings_back_a_tone_at_its_pitch() -> None:
    cfg = AudioConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=40)
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    levels = feature_levels([tone], cfg)
    wave = features_to_waveform(audio_features(tone, cfg), cfg, levels)
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * 8000 / len(wave)
    assert abs(peak_hz - 1000) < 60  # mel bands near 1 kHz are ~60 Hz wide at this resolution
    assert np.abs(wave).max() == pytest.approx(0.9, abs=1e-4)


def test_laplace_image_likelihood_is_the_absolute_error_over_its_scale() -> None:
    from polyfuse.data.batch import ModalityBatch
    from polyfuse.models.decoders import ImageDecoder, gaussian_nll, laplace_nll

    # golden: −log Laplace(1 | 0, b = e^0.5) = 1 / e^0.5 + 0.5 + log 2
    assert laplace_nll(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.5)).item() == pytest.approx(
        math.exp(-0.5) + 0.5 + math.log(2.0), rel=1e-6
    )
    torch.manual_seed(0)
    laplace = ImageDecoder(4, 1, (8, 8), likelihood="laplace")
    gaussian = ImageDecoder(4, 1, (8, 8))
    gaussian.load_state_dict(laplace.state_dict())
    raw = laplace(torch.randn(2, 4))
    pixels = torch.rand(2, 1, 8, 8) * 2 - 1
    batch = ModalityBatch(values=pixels, present=torch.tensor([True, False]))
    mean = laplace.mean(raw)
    expected = laplace_nll(mean[0], pixels[0], laplace.log_scale).sum()
    assert laplace.nll(raw, batch)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert laplace.nll(raw, batch)[1].item() == 0.0  # a row without the image adds nothing
    assert gaussian.nll(raw, batch)[0].item() == pytest.approx(
        gaussian_nll(mean[0], pixels[0], gaussian.log_scale).sum().item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="'gaussian' or 'laplace'"):
        ImageDecoder(4, 1, (8, 8), likelihood="bernoulli")  # type: ignore[arg-type]


def test_a_fitted_prior_is_fitted_on_validation_codes_and_draws_unconditional_samples(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    model, batch, _ = _model(
        synthetic_table, small_config, tmp_path, "vae", {"fitted_prior_components": 2, "latent_dim": 4}
    )
    objective: Any = model.objective("vae")
    assert not objective.prior_fitted  # until calibrated: N(0, I)
    model.eval()
    with torch.no_grad():
        rows = objective.eval_rows(model(batch), batch)
    assert rows["latent"].shape == (12, 4)
    # two tight clusters of codes, at +5 and -5 on the first axis (1 row in 4 at -5)
    codes = torch.zeros(12, 4)
    codes[:, 0] = torch.tensor([5.0, 5.0, 5.0, -5.0] * 3)
    objective.calibrate(dict(rows, latent=codes + 0.01 * torch.randn(12, 4)))
    assert objective.prior_fitted and not math.isnan(float(objective.anomaly_threshold))
    z = objective.latent(None, 400, 1.0, torch.Generator().manual_seed(0))
    assert ((z[:, 0] - 5.0).abs() < 0.5).float().mean().item() == pytest.approx(0.75, abs=0.07)
    assert ((z[:, 0] + 5.0).abs() < 0.5).float().mean().item() == pytest.approx(0.25, abs=0.07)
    # saved with the weights: a model loaded from disk draws from the same prior
    assert {"prior_weights", "prior_means", "prior_logvars"} <= {
        k.split(".")[-1] for k in objective.state_dict()
    }


@pytest.fixture(scope="module")
def crossing_vae(
    synthetic_table: Path, small_config: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MultimodalModel, Any, Any]:
    options = {"cross_prior_components": 3, "cross_prior_inputs": None, "latent_dim": 4}  # every input
    return _model(synthetic_table, small_config, tmp_path_factory.mktemp("crossing"), "vae", options)


def test_cross_priors_learn_from_detached_codes_and_stay_out_of_the_validation_loss(
    crossing_vae: tuple[MultimodalModel, Any, Any],
) -> None:
    model, batch, _ = crossing_vae
    objective: Any = model.objective("vae")
    assert set(objective.cross_priors) == {objective.keys[n] for n in objective.decoded}
    model.train()
    output = model(batch)
    cross = objective.cross_prior_loss(objective.experts(output), output.present)
    assert torch.isfinite(cross) and cross.requires_grad
    cross.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(  # only the cross priors learn from it: their inputs and targets are detached
        g is None or g.abs().sum() == 0 for name, g in grads.items() if ".cross_priors." not in name
    )
    assert grads["objectives.vae.cross_priors.image.net.0.weight"].abs().sum() > 0  # type: ignore[union-attr]
    model.zero_grad()
    saved = objective.cross_priors
    with torch.no_grad():  # training: the term is added to the loss (same draws with and without it)
        output = model(batch)
        torch.manual_seed(0)
        trained = objective.losses(output, batch)
        objective.cross_priors = torch.nn.ModuleDict()
        torch.manual_seed(0)
        plain = objective.losses(output, batch)
        objective.cross_priors = saved
    assert "vae_cross_prior" not in plain
    assert trained["loss"].item() == pytest.approx(plain["loss"].item() + trained["vae_cross_prior"].item())
    model.eval()
    with torch.no_grad():  # the same draws (mopoe picks one subset per row) with and without
        torch.manual_seed(1)
        validation = objective.losses(model(batch), batch)
        objective.cross_priors = torch.nn.ModuleDict()
        torch.manual_seed(1)
        without = objective.losses(model(batch), batch)
        objective.cross_priors = saved
    assert validation["loss"].item() == pytest.approx(without["loss"].item())  # picks the epoch as before
    assert validation["vae_cross_prior"].item() != 0


def test_a_missing_target_is_drawn_from_its_cross_prior_and_a_present_one_from_the_posterior(
    crossing_vae: tuple[MultimodalModel, Any, Any],
) -> None:
    model, batch, _ = crossing_vae
    objective: Any = model.objective("vae")
    prior = objective.cross_priors["image"]
    last = prior.net[-1]
    with torch.no_grad():  # every source gives one component of mean (1, 2, 3, 4)
        last.weight.zero_()
        last.bias.zero_()
        last.bias[:3].copy_(torch.tensor([10.0, 0.0, 0.0]))
        last.bias[3:7].copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    model.eval()

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    with torch.no_grad():
        output = model(batch)
        half = torch.arange(len(output.present["image"])) % 2 == 0
        output = output.with_present({**output.present, "image": output.present["image"] & half})
        own = objective.latent(output, 1, 0.0, seeded())  # the rows' joint posterior codes
        for_image = objective.latent(output, 1, 0.0, seeded(), "image")
        alone = {n: torch.zeros_like(v) for n, v in output.present.items()}
        nothing = objective.latent(output.with_present(alone), 1, 0.0, seeded(), "image")
    image = output.present["image"]
    others = torch.stack([output.present[n] for n in objective.inputs if n != "image"], 1).any(1)
    assert bool(image.any()) and bool((~image & others).any())  # the batch has rows of both kinds
    assert torch.equal(for_image[image], own[image])  # the image is there: the rows' own code
    fixed = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(for_image[~image & others], fixed.expand(int((~image & others).sum()), 4))
    assert torch.allclose(nothing, torch.zeros_like(nothing))  # no source at all: the prior's mean


def test_cross_priors_only_for_the_chosen_rebuilt_inputs(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    options = {"cross_prior_components": 2, "cross_prior_inputs": ["image"], "latent_dim": 4}
    model, batch, _ = _model(synthetic_table, small_config, tmp_path, "vae", options)
    objective: Any = model.objective("vae")
    assert list(objective.cross_priors) == ["image"]
    model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        output = model(batch)
        no_audio = output.with_present({**output.present, "audio": torch.zeros_like(output.present["audio"])})
        # audio has no cross prior: its code is the other inputs' posterior, as without any
        assert torch.equal(
            objective.latent(no_audio, 1, 0.0, generator.manual_seed(3), "audio"),
            objective.latent(no_audio, 1, 0.0, generator.manual_seed(3)),
        )
    with pytest.raises(ValueError, match=r"cross_prior_inputs \['text'\] are not inputs this model rebuilds"):
        _model(
            synthetic_table,
            small_config,
            tmp_path,
            "vae",
            {"cross_prior_components": 2, "cross_prior_inputs": ["text"]},
        )


def test_fit_to_trained_fits_only_the_cross_priors_to_the_trained_codes(
    synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    options = {"cross_prior_components": 2, "cross_prior_inputs": ["image"], "latent_dim": 4}
    model, batch, _ = _model(synthetic_table, small_config, tmp_path, "vae", options)
    objective: Any = model.objective("vae")
    assert objective.needs_fit_to_trained and objective.cross_prior_refit_epochs == 200
    model.eval()
    with torch.inference_mode():  # as `fit_objectives_to_trained` collects them
        rows = objective.trained_fit_rows(model(batch), batch)
    assert set(rows) == {f"{kind}:{n}" for kind in ("mean", "present") for n in objective.inputs} | {
        "code:image"
    }
    sources = objective._cross_prior_sources(
        [rows[f"mean:{n}"] for n in objective.inputs],
        {n: rows[f"present:{n}"] for n in objective.inputs},
        "image",
    )
    usable = objective._cross_prior_rows({n: rows[f"present:{n}"] for n in objective.inputs}, "image")
    assert int(usable.sum()) >= 6

    def nll() -> float:
        with torch.no_grad():
            return -objective.cross_prior("image").log_prob(sources, rows["code:image"])[usable].mean().item()

    others = {k: v.clone() for k, v in model.state_dict().items() if ".cross_priors." not in k}
    before = nll()
    objective.cross_prior_refit_epochs = 100
    objective.fit_to_trained(rows)
    assert nll() < before - 1.0  # it fitted the codes it was given
    after = model.state_dict()
    changed = [
        k for k, v in others.items() if not torch.allclose(v, after[k], rtol=0, atol=0, equal_nan=True)
    ]
    assert changed == []  # and nothing else
    objective.cross_prior_refit_epochs = 0
    assert not objective.needs_fit_to_trained
    with pytest.raises(ValueError, match="cross_prior_refit_epochs must be >= 0"):
        _model(synthetic_table, small_config, tmp_path, "vae", {**options, "cross_prior_refit_epochs": -1})
