"""Contrastive + matching models end to end: table → init --objective → train (CLI) → model directory →
polyfuse.load from a relative path → embed, consistency, zero-shot errors, evaluate, index, search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import polyfuse
from polyfuse.cli import app
from polyfuse.config import load_config
from polyfuse.data.errors import DataError
from polyfuse.data.table import read_table
from polyfuse.retrieval import Index

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def aligned_run(synthetic_table: Path, small_config: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contrastive + matching model over the synthetic table, trained through `polyfuse train`; its
    label column is read for class-level retrieval and negatives, but no supervised head is trained."""
    work = tmp_path_factory.mktemp("aligned")
    config_path = work / "config.yaml"
    small_config(synthetic_table, config_path, epochs=4, targets=(), objectives=("contrastive", "matching"))
    result = runner.invoke(app, ["train", str(config_path), "-o", str(work / "run")])
    assert result.exit_code == 0, result.output
    return work / "run"


def test_init_without_target_writes_an_alignment_config(synthetic_table: Path, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    result = runner.invoke(app, ["init", str(synthetic_table), "--objective", "contrastive", "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert [o.name for o in config.objectives] == ["contrastive"]
    assert config.objectives[0].options == {"label_column": "label"}  # the inferred label column
    assert list(config.data.targets) == ["label"]

    with_target = tmp_path / "both.yaml"
    result = runner.invoke(
        app,
        ["init", str(synthetic_table), "--objective", "contrastive", "-t", "label", "-o", str(with_target)],
    )
    assert result.exit_code == 0, result.output
    assert [o.name for o in load_config(with_target).objectives] == ["supervised", "contrastive"]


def test_alignment_model_trains_and_serves_every_capability(
    aligned_run: Path, synthetic_table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = json.loads((aligned_run / "metrics.json").read_text())["test"]
    # every aligned pair, both directions, class-level (a hit shares the query's label)
    assert metrics["retrieval_audio_to_image"]["match"] == "label"
    assert {"retrieval_image_to_text", "retrieval_text_to_image", "consistency"} <= set(metrics)
    for values in (metrics["retrieval_audio_to_image"], metrics["consistency"]):
        assert all(np.isfinite(v) for v in values.values() if isinstance(v, float))
    assert 0.0 <= metrics["consistency"]["roc_auc"] <= 1.0

    monkeypatch.chdir(aligned_run.parent)
    predictor = polyfuse.load(Path("run/model"))  # a relative path
    assert predictor.model.fusion is None  # matching's default pairwise head reads no fused vector
    frame = read_table(synthetic_table).frame
    complete = frame[frame["image"].notna() & frame["audio"].notna() & frame["text"].notna()]
    rows = complete.head(6).to_dict("records")
    base = synthetic_table.parent
    image = predictor.embed(rows, modality="image", base_dir=base)
    assert image.shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    rows[0]["audio"] = None
    audio = predictor.embed(rows, modality="audio", base_dir=base)
    assert np.isnan(audio[0]).all() and not np.isnan(audio[1:]).any()  # no vector for a missing input
    fused = predictor.embed(rows, base_dir=base)
    assert fused.shape[0] == 6 and not np.isnan(fused).any()

    # zero-shot: each image against prompts built from two candidate words, through the text tower
    zero_shot = predictor.zero_shot(
        rows, ["alpha", "beta"], modality="image", text_input="text", base_dir=base
    )
    assert list(zero_shot.columns) == ["label", "proba_alpha", "proba_beta"]
    np.testing.assert_allclose(zero_shot[["proba_alpha", "proba_beta"]].sum(axis=1), 1.0, rtol=1e-5)
    prompts = predictor.embed([{"text": t.format("alpha")} for t in ("{}", "a {}")], modality="text")
    assert not np.isnan(prompts).any()
    with pytest.raises(ValueError, match="modality"):
        predictor.zero_shot(rows, ["alpha"], text_input="text", base_dir=base)  # image or audio?

    scores = predictor.consistency(rows, base_dir=base)
    assert scores.shape == (6,) and ((scores[1:] >= 0) & (scores[1:] <= 1)).all()
    table = predictor.predict_table(rows, base_dir=base)  # what `polyfuse predict` writes
    assert list(table.columns) == ["consistency"]
    np.testing.assert_allclose(table["consistency"].to_numpy(), scores, rtol=1e-6)
    with pytest.raises(ValueError, match="supervised"):
        predictor.predict(rows, base_dir=base)

    # the loaded model scores the test split exactly as training did
    again = predictor.evaluate(read_table(synthetic_table).subset(_test_rows(synthetic_table)))
    assert again["retrieval_audio_to_image"]["recall@1"] == pytest.approx(
        metrics["retrieval_audio_to_image"]["recall@1"]
    )


def test_index_build_and_search_through_the_cli(
    aligned_run: Path, synthetic_table: Path, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    args = ["index", "build", str(aligned_run / "model"), str(synthetic_table), "-o", str(index_dir)]
    result = runner.invoke(app, [*args, "--chunk-rows", "64"])
    assert result.exit_code == 0, result.output
    index = Index.load(index_dir)
    assert set(index.collections) == {"audio", "image", "text"}
    frame = read_table(synthetic_table).frame
    np.testing.assert_array_equal(index.collections["image"].rows, np.flatnonzero(frame["image"].notna()))

    # the nearest image to row 5's own image embedding is row 5
    predictor = polyfuse.load(aligned_run / "model")
    frame = read_table(synthetic_table).frame
    row = int(frame.index[frame["image"].notna()][5])
    query = {"image": str(synthetic_table.parent / frame.loc[row, "image"])}
    hits = predictor.search(index, query, target="image", k=3)
    assert hits.loc[0, "row"] == row and hits.loc[0, "score"] == pytest.approx(1.0, abs=1e-4)
    assert list(hits["rank"]) == [1, 2, 3] and hits["score"].is_monotonic_decreasing

    text = runner.invoke(app, ["search", str(index_dir), "--text", str(frame.loc[3, "text"]), "--k", "4"])
    assert text.exit_code != 0  # three inputs indexed: the user must say which one to search
    text = runner.invoke(
        app, ["search", str(index_dir), "--text", str(frame.loc[3, "text"]), "--modality", "text", "--k", "4"]
    )
    assert text.exit_code == 0, text.output
    assert str(frame.loc[3, "id"]) in text.output and "1.0000" in text.output  # itself, first


def test_an_interrupted_index_build_resumes_without_recomputing(
    aligned_run: Path, synthetic_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polyfuse.predict import Predictor
    from polyfuse.retrieval import index_model

    predictor = Predictor(aligned_run / "model")
    calls: list[int] = []
    original = predictor.embed_inputs

    def failing(rows, inputs, base_dir=None):  # type: ignore[no-untyped-def]
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(rows, inputs, base_dir)

    monkeypatch.setattr(predictor, "embed_inputs", failing)
    with pytest.raises(KeyboardInterrupt):
        index_model(predictor, synthetic_table, tmp_path / "idx", chunk_rows=50, log=lambda _: None)
    assert not (tmp_path / "idx" / "index.json").exists()
    calls.clear()
    monkeypatch.setattr(predictor, "embed_inputs", original)
    done: list[int] = []
    info = index_model(
        predictor, synthetic_table, tmp_path / "idx", chunk_rows=50, log=lambda _: None, progress=done.append
    )
    assert sum(done) == len(read_table(synthetic_table))
    fresh = index_model(predictor, synthetic_table, tmp_path / "fresh", chunk_rows=50, log=lambda _: None)
    assert info["inputs"] == fresh["inputs"]
    np.testing.assert_array_equal(
        np.load(tmp_path / "idx" / "image" / "vectors.npy"),
        np.load(tmp_path / "fresh" / "image" / "vectors.npy"),
    )


def test_init_from_copies_the_pretrained_encoders(
    aligned_run: Path, synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    config_path = tmp_path / "finetune.yaml"
    tuned = small_config(synthetic_table, config_path, epochs=1)
    # copied encoders are pretrained ones: gradual unfreezing holds them for the one epoch (linear probe)
    tuned = tuned.model_copy(
        update={"training": tuned.training.model_copy(update={"unfreeze_after_epochs": 1})}
    )
    config_path.write_text(tuned.to_yaml())
    result = runner.invoke(
        app, ["train", str(config_path), "-o", str(tmp_path / "run"), "--init-from", str(aligned_run)]
    )
    assert result.exit_code == 0, result.output
    assert "initialised from" in result.output and "encoder 'image'" in result.output

    # before any step the fine-tune model's encoders are the pretrained ones
    from polyfuse.artifact import load_model
    from polyfuse.data.prepare import prepare_data
    from polyfuse.models.model import build_model
    from polyfuse.training.init_from import init_from

    source = load_model(aligned_run / "model")[0]
    config = load_config(config_path)
    model = build_model(config, prepare_data(config.data, show_progress=False).preprocessor)
    init_from(model, aligned_run)
    for key in ("image", "audio", "text"):
        for (name, ours), (_, theirs) in zip(
            model.encoders[key].state_dict().items(), source.encoders[key].state_dict().items(), strict=True
        ):
            assert torch.equal(ours, theirs), name
    # ... and after the epoch their weights are still the source's
    tuned_model = load_model(tmp_path / "run" / "model")[0]
    for key in ("image", "audio", "text"):
        theirs = dict(source.encoders[key].named_parameters())
        for name, ours in tuned_model.encoders[key].named_parameters():
            assert torch.equal(ours, theirs[name]), f"{key}.{name}"


def test_init_from_a_model_with_another_encoder_is_a_clear_error(
    aligned_run: Path, synthetic_table: Path, small_config: Any, tmp_path: Path
) -> None:
    config = small_config(synthetic_table, tmp_path / "c.yaml", epochs=1)
    image = config.encoders["image"].model_copy(update={"options": {"widths": [4, 8], "blocks_per_stage": 1}})
    config = config.model_copy(
        update={
            "encoders": {**config.encoders, "image": image},
            "training": config.training.model_copy(update={"init_from": aligned_run}),
        }
    )
    with pytest.raises(DataError, match="encoder 'image'"):
        polyfuse.train(config, tmp_path / "run", show_progress=False, log=lambda *_: None)


def _test_rows(table: Path) -> list[int]:
    frame = read_table(table).frame
    return [int(i) for i in frame.index[frame["split"].astype(str) == "test"]]


def test_supervised_needs_a_target_and_alignment_two_inputs(synthetic_table: Path, tmp_path: Path) -> None:
    from polyfuse.init_config import check_config, init_config

    config = init_config(synthetic_table, [], tmp_path / "c.yaml", objectives=["contrastive"])
    bad = config.model_copy(
        update={
            "data": config.data.model_copy(update={"targets": {}}),
            "objectives": [
                *config.objectives,
                config.objectives[0].model_copy(update={"name": "supervised", "options": {}}),
                config.objectives[0].model_copy(update={"name": "contrastiv"}),
            ],
        }
    )
    messages = [p.message for p in check_config(bad)]
    assert any("label_column" in m and "data.targets" in m for m in messages), messages
    assert any("supervised objective needs at least one target" in m for m in messages), messages
    assert any("unknown objective 'contrastiv'" in m for m in messages), messages


def test_a_table_without_labels_trains_a_contrastive_model(
    synthetic_table: Path, small_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = read_table(synthetic_table).frame.drop(columns=["label"])
    unlabeled = synthetic_table.parent / "unlabeled.csv"
    frame.to_csv(unlabeled, index=False)
    config_path = tmp_path / "config.yaml"
    refused = runner.invoke(app, ["init", str(unlabeled), "-o", str(config_path)])
    assert refused.exit_code != 0 and "--target" in str(refused.exception or refused.output)

    result = runner.invoke(
        app, ["init", str(unlabeled), "--objective", "contrastive", "-o", str(config_path)]
    )
    assert result.exit_code == 0, result.output
    config = load_config(config_path)
    assert config.data.targets == {} and config.objectives[0].options == {}
    small_config(unlabeled, config_path, epochs=1, targets=(), objectives=("contrastive",))
    monkeypatch.chdir(tmp_path)
    trained = runner.invoke(app, ["train", "config.yaml", "-o", "run"])
    assert trained.exit_code == 0, trained.output
    metrics = json.loads(Path("run/metrics.json").read_text())["test"]
    assert metrics["retrieval_audio_to_image"]["match"] == "instance"  # no labels: the same row is the hit
    evaluated = runner.invoke(app, ["evaluate", "run/model", str(unlabeled), "--split", "test"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "retrieval_audio_to_image" in evaluated.output and "recall@1" in evaluated.output
    predicted = runner.invoke(app, ["predict", "run/model", str(unlabeled), "-o", "p.csv"])
    assert predicted.exit_code != 0 and "use embed, search or zero_shot" in str(predicted.exception)
    vectors = polyfuse.load("run/model").embed(
        frame.head(4).to_dict("records"), base_dir=synthetic_table.parent
    )
    assert vectors.shape[0] == 4


def test_validate_reports_bad_objective_values_as_field_errors(synthetic_table: Path, tmp_path: Path) -> None:
    from polyfuse.init_config import check_config, init_config

    config = init_config(
        synthetic_table, ["label"], tmp_path / "c.yaml", objectives=["contrastive", "matching"]
    )
    contrastive, matching = config.objectives[1], config.objectives[2]
    bad = config.model_copy(
        update={
            "objectives": [
                config.objectives[0],
                contrastive.model_copy(update={"options": {"embed_dim": 0, "anchor": "photo"}}),
                matching.model_copy(update={"options": {"hard_negatives": 2.0}}),
            ]
        }
    )
    messages = [p.message for p in check_config(bad)]
    assert any(m.startswith("field 'objectives.1.options'") and "anchor 'photo'" in m for m in messages), (
        messages
    )
    assert any(m.startswith("field 'objectives.2.options'") and "hard_negatives" in m for m in messages), (
        messages
    )
