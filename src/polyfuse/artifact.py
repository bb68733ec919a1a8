"""The model directory: everything needed to predict offline, and nothing that can run code on load.

    model/
      polyfuse.json          format + polyfuse versions, inputs, targets
      config.yaml            the resolved run config (Hugging Face encoders point at backbones/)
      model.safetensors      weights of everything but the Hugging Face backbones
      backbones/<input>/     each Hugging Face backbone, save_pretrained (config.json + model.safetensors),
                             with its own processor (preprocessor_config.json / tokenizer files)
      tokenizer/             the text tokenizer, when there are text inputs
      preprocessing.json     image/audio/text settings, numeric statistics, vocabularies, label maps
      labels.json            class names per target
      metrics.json           evaluation results
      calibration.json       temperatures per target, when `polyfuse calibrate` has run (optional)
      README.md              a short model card

The folder is written beside its destination and renamed into place, so a crash leaves the previous model
(or none), never half of one. No pickle: loading refuses .pkl/.pt/.pth/.bin/.joblib weights.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyfuse.atomic import atomic_replace_dir
from polyfuse.config import EncoderConfig, RunConfig, parse_config
from polyfuse.data.errors import DataError, Problem
from polyfuse.data.modalities.pretrained import save_processor
from polyfuse.data.preprocess import Preprocessor
from polyfuse.data.schema import Modality
from polyfuse.models.adapters import PEFT_METHODS, save_backbone
from polyfuse.models.model import MultimodalModel, build_model, count_parameters, encoder_name

FORMAT = "polyfuse-model"
FORMAT_VERSION = 2
# Format 1 kept the supervised heads at the top of the model; format 2 puts every objective's modules under
# objectives.<name>. Older weights are renamed on load.
V1_RENAMES = (("heads.", "objectives.supervised.heads."), ("aux_heads.", "objectives.supervised.aux_heads."))
PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt"}


def _is_backbone(encoder: nn.Module) -> bool:
    return hasattr(encoder, "save_pretrained") and hasattr(encoder, "name_or_path")


def save_model(
    directory: Path,
    model: MultimodalModel,
    config: RunConfig,
    preprocessor: Preprocessor,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory atomically; returns its path."""
    from polyfuse import __version__

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.staging-"))
    try:
        encoders = dict(config.encoders)
        backbone_prefixes = []
        for name, key in model.input_keys.items():
            encoder = model.encoders[key]
            if _is_backbone(encoder):
                modality = preprocessor.inputs[name]
                original = encoder_name(config, name, modality)
                chosen = config.encoders.get(name) or EncoderConfig(name=original)
                adapter = chosen.adapter
                merge = adapter is None or adapter.merge
                if save_backbone(encoder, staging / "backbones" / key, merge=merge):
                    assert adapter is not None  # an adapter folder is written for unmerged peft only
                    adapter = adapter.model_copy(update={"path": f"backbones/{key}/adapter"})
                elif adapter is not None and adapter.method in PEFT_METHODS:
                    adapter = None  # merged into the saved backbone
                options = {k: v for k, v in chosen.options.items() if k == "gradient_checkpointing"}
                encoders[name] = EncoderConfig(
                    name=f"{modality.value}.hf",
                    trainable=chosen.trainable,
                    options={**options, "name_or_path": f"backbones/{key}", "saved_from": original},
                    adapter=adapter,
                    learning_rate=chosen.learning_rate,
                )
                backbone_prefixes.append(f"encoders.{key}.")
        # Each pretrained encoder's processor goes beside its backbone, so a loaded model preprocesses
        # that input exactly as in training.
        state_text = preprocessor.state.model_copy(deep=True)
        for name, spec in preprocessor.state.pretrained.items():
            folder = staging / "backbones" / model.input_keys[name]
            save_processor(spec, folder)
            state_text.pretrained[name] = spec.model_copy(
                update={"source": f"backbones/{model.input_keys[name]}"}
            )
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not any(k.startswith(p) for p in backbone_prefixes)
        }
        save_file(state, str(staging / "model.safetensors"), metadata={"format": FORMAT})

        if Modality.TEXT in preprocessor.inputs.values():
            preprocessor.tokenizer.save_pretrained(str(staging / "tokenizer"))
            state_text.config.text.tokenizer = "tokenizer"
        saved_config = config.model_copy(update={"encoders": encoders})
        (staging / "config.yaml").write_text(saved_config.to_yaml())
        (staging / "preprocessing.json").write_text(state_text.model_dump_json(indent=2))
        labels = {t: s.classes for t, s in preprocessor.state.targets.items() if s.task != "regression"}
        (staging / "labels.json").write_text(json.dumps(labels, indent=2))
        (staging / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "polyfuse_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "inputs": {n: m.value for n, m in preprocessor.inputs.items()},
            "targets": {t: s.task for t, s in preprocessor.state.targets.items()},
            "objectives": list(model.objectives),
            "parameters": count_parameters(model),
        }
        (staging / "polyfuse.json").write_text(json.dumps(info, indent=2))
        (staging / "README.md").write_text(_model_card(info, config, metrics or {}))
        atomic_replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_model(directory: Path | str) -> tuple[MultimodalModel, RunConfig, Preprocessor, dict[str, Any]]:
    """Rebuild the model from its directory, offline. Errors say what is wrong with the folder."""
    directory = Path(directory)
    info = _read_info(directory)
    _refuse_pickles(directory)
    config = parse_config(
        yaml.safe_load((directory / "config.yaml").read_text()), str(directory / "config.yaml")
    )
    encoders = {
        name: enc.model_copy(
            update={
                "options": _resolve_backbone(enc.options, directory),
                "adapter": enc.adapter
                if enc.adapter is None or enc.adapter.path is None
                else enc.adapter.model_copy(update={"path": str((directory / enc.adapter.path).resolve())}),
            }
        )
        for name, enc in config.encoders.items()
    }
    config = config.model_copy(update={"encoders": encoders})
    state_json = json.loads((directory / "preprocessing.json").read_text())
    if state_json.get("config", {}).get("text", {}).get("tokenizer") == "tokenizer":
        state_json["config"]["text"]["tokenizer"] = str((directory / "tokenizer").resolve())
    for spec in state_json.get("pretrained", {}).values():
        if str(spec.get("source", "")).startswith("backbones/"):
            spec["source"] = str((directory / spec["source"]).resolve())
    preprocessor = Preprocessor.from_json(json.dumps(state_json))
    model = build_model(config, preprocessor)
    try:
        weights = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise DataError(
            [Problem(f"corrupt or unreadable model weights: {e}", file=str(directory / "model.safetensors"))]
        ) from None
    if info.get("format_version", 1) < 2:
        weights = {_renamed_v1(k): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    backbone_prefixes = tuple(
        f"encoders.{model.input_keys[n]}."
        for n, e in encoders.items()
        # _resolve_backbone made the path absolute: compare with the absolute folder (a relative
        # `directory` never matched, so a model with a backbone failed to load from a relative path)
        if "name_or_path" in e.options and str(e.options["name_or_path"]).startswith(str(directory.resolve()))
    )
    missing = [k for k in missing if not k.startswith(backbone_prefixes)]
    if missing or unexpected:
        raise DataError(
            [
                Problem(
                    f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}",
                    file=str(directory / "model.safetensors"),
                )
            ]
        )
    _apply_calibration(model, directory)
    model.eval()
    return model, config, preprocessor, info


def _apply_calibration(model: MultimodalModel, directory: Path) -> None:
    """Temperatures from calibration.json (`polyfuse calibrate`) divide the supervised logits at predict time."""
    from polyfuse.evaluation.calibration import read_temperatures

    temperatures = read_temperatures(directory)
    for name in model.objectives_for("predict"):
        objective: Any = model.objective(name)
        objective.temperatures = {t: v for t, v in temperatures.items() if t in objective.specs}


def _renamed_v1(key: str) -> str:
    for old, new in V1_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _read_info(directory: Path) -> dict[str, Any]:
    from polyfuse import __version__

    if not directory.is_dir():
        raise DataError(
            [
                Problem(
                    "model directory not found",
                    file=str(directory),
                    fix="pass the folder `polyfuse train` wrote (RUN_DIR/model)",
                )
            ]
        )
    path = directory / "polyfuse.json"
    if not path.exists():
        raise DataError([Problem("not a polyfuse model directory (no polyfuse.json)", file=str(directory))])
    info: dict[str, Any] = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise DataError([Problem(f"unknown format {info.get('format')!r}", file=str(path))])
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(
            [
                Problem(
                    f"model format {info.get('format_version')} was written by polyfuse {info.get('polyfuse_version')}; "
                    f"this polyfuse ({__version__}) reads format {FORMAT_VERSION} and older",
                    file=str(path),
                    fix="upgrade polyfuse (pip install -U polyfuse)",
                )
            ]
        )
    return info


def _refuse_pickles(directory: Path) -> None:
    found = [p for p in directory.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if found:
        raise DataError(
            [
                Problem(
                    "pickle-based files are never loaded (they can run code)",
                    file=str(found[0]),
                    fix="polyfuse models hold safetensors + JSON only; re-save the model with polyfuse",
                )
            ]
        )


def _resolve_backbone(options: dict[str, Any], directory: Path) -> dict[str, Any]:
    path = options.get("name_or_path")
    if isinstance(path, str) and path.startswith("backbones/"):
        options = {k: v for k, v in options.items() if k != "saved_from"}
        options["name_or_path"] = str((directory / path).resolve())
    else:
        options = {k: v for k, v in options.items() if k != "saved_from"}
    return options


def _model_card(info: dict[str, Any], config: RunConfig, metrics: dict[str, Any]) -> str:
    lines = [
        "# polyfuse model",
        "",
        f"- polyfuse {info['polyfuse_version']}, format {info['format_version']}, created {info['created']}",
        f"- inputs: {', '.join(f'{n} ({m})' for n, m in info['inputs'].items())}",
        f"- targets: {', '.join(f'{t} ({k})' for t, k in info['targets'].items()) or 'none'}",
        f"- objectives: {', '.join(info['objectives'])}",
        f"- fusion: {config.fusion.name}, {info['parameters']:,} parameters",
        f"- trained on: {config.data.table}",
        "",
        "## Metrics",
        "",
    ]
    for split, per_target in metrics.items():
        if not isinstance(per_target, dict):
            continue
        for target, values in per_target.items():
            if isinstance(values, dict):
                shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
                lines.append(f"- {split} / {target}: {shown}")
    lines += ["", "Load with `polyfuse.load(path)`; no network access is needed.", ""]
    return "\n".join(lines)
