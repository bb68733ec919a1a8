"""vae models end to end: table on disk → `polyfuse init --objective vae` → `polyfuse train` → model directory →
`polyfuse.load` (relative path) → generate / predict with the anomaly flag / evaluate, through the CLI too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from PIL import Image
from typer.testing import CliRunner

import polyfuse
from polyfuse.cli import app
from polyfuse.config import EncoderConfig
from polyfuse.data.errors import DataError

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def vae_run(
    synthetic_table: Path,
    small_encoders: dict[str, EncoderConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    work = tmp_path_factory.mktemp("vae")
    config_path = work / "config.yaml"
    result = runner.invoke(app, ["init", str(synthetic_table), "--objective", "vae", "-o", str(config_path)])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load(config_path.read_text())
    assert [o["name"] for o in raw["objectives"]] == ["vae"]
    # three times a classifier's epochs, and the config says why
    assert raw["training"]["epochs"] == 60
    assert raw["training"]["early_stopping_patience"] == 15  # plateaus last longer too
    assert "# polyfuse init chose 60 epochs: a vae" in config_path.read_text()
    assert raw["objectives"][0]["options"]["audio_frames"] > 1  # sized from the table's clips
    # the table's label makes same-class rows alignment positives (the model still trains no head)
    assert raw["objectives"][0]["options"]["label_column"] == "label"
    # a sharper image likelihood, and unconditional samples from where the codes are (see init_config)
    assert raw["objectives"][0]["options"]["image_likelihood"] == "laplace"
    assert raw["objectives"][0]["options"]["fitted_prior_components"] == 10
    # an image generated from a clip gets its code from a learned prior of image codes given the clip's
    assert raw["objectives"][0]["options"]["cross_prior_components"] == 10
    assert raw["objectives"][0]["options"]["cross_prior_inputs"] == ["image"]  # sound: from the posterior
    raw["encoders"] = {n: small_encoders[n].model_dump() for n in raw["encoders"]}
    raw["training"].update(epochs=2, batch_size=16, early_stopping_patience=None)
    # two inputs keep it quick (anomaly scores average the ELBO over every non-empty subset: 3 of 2 inputs)
    raw["objectives"][0]["options"].update(inputs=["audio", "image"], latent_dim=8, false_alarm_rate=0.1)
    raw["data"]["cache_dir"] = str(work / "cache")
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = runner.invoke(app, ["train", str(config_path), "-o", str(work / "run")])
    assert result.exit_code == 0, result.output
    # after training, the image's cross prior was fitted to the trained model's codes
    assert "fitted to the trained model's outputs on the training split: vae" in result.output
    return work / "run"


def test_vae_model_generates_scores_and_flags(
    vae_run: Path, synthetic_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = json.loads((vae_run / "metrics.json").read_text())
    assert metrics["val"]["vae"]["anomaly_threshold"] > 0
    assert metrics["test"]["vae"]["image_mse"] > 0 and "audio_mse_from_others" in metrics["test"]["vae"]

    monkeypatch.chdir(vae_run)
    predictor = polyfuse.load("model")  # a relative path
    frame = pd.read_csv(synthetic_table)
    rows = frame.head(4)
    images = predictor.generate(rows, "image", base_dir=synthetic_table.parent)
    assert len(images) == 4 and isinstance(images[0], Image.Image)
    clips = predictor.generate(rows, "audio", from_inputs=["image"], base_dir=synthetic_table.parent)
    assert clips[0].dtype == np.float32 and clips[0].ndim == 1
    # the same seed gives the same samples; unconditional samples come from the prior
    again = predictor.generate(rows, "image", base_dir=synthetic_table.parent)
    assert np.array_equal(np.asarray(images[1]), np.asarray(again[1]))
    assert len(predictor.generate(None, "image", n=5)) == 5
    # the prior unconditional samples come from was fitted on the validation codes and saved
    objective = predictor.model.objective("vae")
    assert objective.prior_fitted and objective.decoder("image").likelihood == "laplace"
    assert float(objective.prior_weights.sum()) == pytest.approx(1.0, abs=1e-5)
    # the image's cross prior came back from the model directory: an image from the clip alone is drawn
    # from it, not decoded from the clip's own posterior
    assert set(objective.cross_priors) == {"image"}
    from_clip = predictor.generate(rows, "image", from_inputs=["audio"], base_dir=synthetic_table.parent)
    saved = objective.cross_priors
    objective.cross_priors = type(saved)()
    own = predictor.generate(rows, "image", from_inputs=["audio"], base_dir=synthetic_table.parent)
    objective.cross_priors = saved
    assert not np.array_equal(np.asarray(from_clip[0]), np.asarray(own[0]))

    flagged = predictor.predict(frame, base_dir=synthetic_table.parent)
    assert list(flagged.columns) == ["anomaly_score", "anomaly"]
    share = flagged["anomaly"].mean()
    assert 0.0 < share < 0.5  # calibrated at 10 % on the validation rows
    # an image that is pure noise is further from anything the model saw than a real one
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
    odd = predictor.anomaly([{"image": str(noise)}])
    usual = predictor.anomaly(frame[["image"]].head(20), base_dir=synthetic_table.parent)
    assert odd["anomaly_score"][0] > usual["anomaly_score"].max()


def test_generate_and_predict_commands(vae_run: Path, synthetic_table: Path, tmp_path: Path) -> None:
    model = vae_run / "model"
    clip = synthetic_table.parent / pd.read_csv(synthetic_table)["audio"].dropna().iloc[0]
    out = tmp_path / "from-audio.png"
    result = runner.invoke(
        app, ["generate", str(model), "--from", f"audio={clip}", "--to", "image", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    preprocessing = yaml.safe_load((model / "config.yaml").read_text())["data"]["preprocessing"]
    height, width = preprocessing["image"]["size"]
    assert Image.open(out).size == (width, height)
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["generate", str(model), "--to", "image", "--n", "4", "-o", str(grid)])
    assert result.exit_code == 0, result.output
    grid_width, grid_height = Image.open(grid).size
    assert 2 * width < grid_width < 3 * width and 2 * height < grid_height < 3 * height  # 2 × 2 tiles
    wav = tmp_path / "out.wav"
    result = runner.invoke(app, ["generate", str(model), "--to", "audio", "-o", str(wav)])
    assert result.exit_code == 0, result.output
    wave, rate = sf.read(wav)
    assert rate == preprocessing["audio"]["sample_rate"]
    assert len(wave) > 0 and np.abs(wave).max() > 0
    # user mistakes are DataErrors (`main` prints them and exits 2; the test runner only sees the exception)
    result = runner.invoke(app, ["generate", str(model), "--to", "audio", "-o", str(tmp_path / "x.png")])
    assert isinstance(result.exception, DataError) and ".wav" in str(result.exception)
    result = runner.invoke(app, ["generate", str(model), "--to", "nothing", "-o", str(out)])
    assert isinstance(result.exception, DataError) and "not an input" in str(result.exception)

    predictions = tmp_path / "predictions.csv"
    result = runner.invoke(
        app, ["predict", str(model), str(synthetic_table), "--split", "test", "-o", str(predictions)]
    )
    assert result.exit_code == 0, result.output
    written = pd.read_csv(predictions)
    assert {"anomaly_score", "anomaly"} <= set(written.columns)


def test_evaluate_reports_reconstruction(vae_run: Path, synthetic_table: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(vae_run / "model"), str(synthetic_table), "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "image_mse" in result.output


def test_evaluate_scores_the_anomaly_flag_against_a_label_column(
    vae_run: Path, synthetic_table: Path, tmp_path: Path
) -> None:
    frame = pd.read_csv(synthetic_table)
    normal = frame[(frame["split"] == "test") & frame["image"].notna()].head(15).copy()
    for column in ("image", "audio"):
        normal[column] = [
            str(synthetic_table.parent / p) if isinstance(p, str) else p for p in normal[column]
        ]
    odd = normal.copy()
    rng = np.random.default_rng(0)
    for i in range(len(odd)):  # the same rows with their image swapped for pure noise
        noise = tmp_path / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
        odd.iloc[i, odd.columns.get_loc("image")] = str(noise)
    normal["ood"], odd["ood"] = "no", "yes"
    table = tmp_path / "ood.csv"
    pd.concat([normal, odd]).to_csv(table, index=False)
    report = tmp_path / "metrics.json"
    args = ["evaluate", str(vae_run / "model"), str(table), "--anomaly-label", "ood", "-o", str(report)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    anomaly = json.loads(report.read_text())["anomaly"]
    assert anomaly["rows"] == 30 and anomaly["out_of_distribution"] == 15 and anomaly["left_out"] == 0
    assert anomaly["roc_auc"] > 0.9  # noise images are far from anything the model rebuilt in training
    assert 0.0 <= anomaly["flag_false_alarm_rate"] <= 1.0 and anomaly["flag_recall"] > 0.5
    assert "image_mse" in json.loads(report.read_text())["vae"]
    # a label the command cannot read names its row and column; a missing column names the columns
    pd.concat([normal, odd.assign(ood="maybe")]).to_csv(table, index=False)
    result = runner.invoke(app, args)
    assert isinstance(result.exception, DataError)
    assert "row 15" in str(result.exception) and "column 'ood'" in str(result.exception)
    result = runner.invoke(app, [*args[:3], "--anomaly-label", "nope"])
    assert isinstance(result.exception, DataError) and "'nope' is not in the table" in str(result.exception)
    # one class only: no ROC-AUC to compute
    normal.to_csv(table, index=False)
    result = runner.invoke(app, args)
    assert isinstance(result.exception, DataError) and "needs both" in str(result.exception)
