"""`polyfuse init` and `polyfuse validate`: a complete config from a table, and every config error at once."""

from __future__ import annotations

import inspect
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from polyfuse.config import EncoderConfig, FusionConfig, ObjectiveConfig, RunConfig, TrainingConfig
from polyfuse.config_checks import build_problems, table_problems, unknown_column_problem
from polyfuse.data.errors import DataError, MediaError, Problem, did_you_mean
from polyfuse.data.infer import infer_schema
from polyfuse.data.media import is_missing, resolve_media
from polyfuse.data.modalities.audio import AudioConfig
from polyfuse.data.modalities.image import ImageConfig
from polyfuse.data.prepare import DataConfig
from polyfuse.data.preprocess import PreprocessingConfig
from polyfuse.data.schema import Modality, Role, TableSchema
from polyfuse.data.splits import SplitConfig
from polyfuse.data.table import Table, read_table
from polyfuse.models.encoders import DEFAULT_ENCODERS, ENCODERS, list_encoders
from polyfuse.models.fusion import FUSIONS, list_fusions
from polyfuse.objectives import OBJECTIVES, list_objectives, objective_options
from polyfuse.presets import preprocessing_preset

# Options init writes for a default encoder, over the class's own defaults (which stay as they were, so
# model directories written before keep loading). audio.cnn's first stage runs at the highest resolution
# (40 mel bands / 2 x frames / 2) and cost most: with 16 channels there instead of 32 the default
# AV-Digits run took 115.1 s instead of 149.8 s (bench/time_to_accuracy.py, 3 seeds, same session, no heap
# trimming in either) at the same accuracy (fused 0.9989, 0.988 without either input).
INIT_ENCODER_OPTIONS: dict[str, dict[str, Any]] = {"audio.cnn": {"widths": [16, 64, 128]}}
SNIFF_FILES = 20  # media files opened to pick image size/mode and audio sample rate


def init_config(
    table_path: Path,
    targets: list[str],
    output: Path,
    *,
    overrides: dict[str, str] | None = None,
    fusion: str | None = None,
    preset: str | None = None,
    objectives: list[str] | None = None,
    encoding: str | None = None,
    notes: list[str] | None = None,
    probe: bool = True,
) -> RunConfig:
    """A complete config for `table_path`, with defaults chosen from the inferred schema and a look at a
    few media files (native image size and colour mode, native audio sample rate).

    The setup is chosen from a probe of each input's own predictive power (`polyfuse.probe`): inputs
    that each name the label (redundant) get the gated fusion with modality dropout and per-input heads;
    inputs that only answer together (complementary) get FiLM without them, trained for longer. A given
    `fusion` replaces only the fusion chosen; the rest of the setup still follows the probe. Why is
    appended to `notes`. `probe` False skips the probe and keeps the redundant setup (tests and scripts
    that set the rest up themselves).

    `objectives` (default: supervised) may add contrastive and / or matching. Without a target, such a
    config trains no supervised head; a label column the table has (given or inferred) is still read, so
    that rows of one class are not each other's negatives and retrieval is scored at class level."""
    objectives = list(dict.fromkeys(objectives or ["supervised"]))
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise DataError(f"unknown objective(s) {unknown}; choose from {list_objectives()}")
    if targets and "supervised" not in objectives:
        objectives.insert(0, "supervised")  # a target given: a supervised head is trained beside
    table = read_table(table_path, encoding=encoding)
    names = list(map(str, table.frame.columns))
    missing = [t for t in targets if t not in names]
    if missing:
        raise DataError(
            [
                Problem(
                    f"--target '{t}' is not a column of the table{did_you_mean(t, names)}; columns: {names}"
                )
                for t in missing
            ]
        )
    columns = dict(overrides or {})
    for t in targets:
        columns.setdefault(t, Role.LABEL.value)
    schema = infer_schema(table, columns)
    if not targets:
        targets = schema.columns_of(Role.LABEL)[:1]
        if not targets and "supervised" in objectives:
            raise DataError("no target column given or inferred; pass --target COLUMN")
    split_columns = schema.columns_of(Role.SPLIT)
    if split_columns:
        split = SplitConfig(strategy="column", column=split_columns[0])
    else:
        split = SplitConfig(strategy="stratified")
    preprocessing = preprocessing_preset(preset) if preset else suggest_preprocessing(table, schema)
    data = DataConfig(
        table=table_path.resolve(),
        columns={c.name: c.kind.value for c in schema.columns if c.name not in targets},
        targets={t: None for t in targets},
        encoding=encoding,
        split=split,
        preprocessing=preprocessing,
    )
    encoders = {
        name: EncoderConfig(
            name=encoder,
            trainable=modality is not Modality.TEXT,
            options=dict(INIT_ENCODER_OPTIONS.get(encoder, {})),
        )
        for name, modality in schema.input_names().items()
        for encoder in [DEFAULT_ENCODERS[modality.value]]
    }
    label = targets[0] if targets else None
    config = RunConfig(
        data=data,
        encoders=encoders,
        fusion=FusionConfig(name=fusion or "gated"),
        objectives=[_objective_config(name, label) for name in objectives],
    )
    if "vae" in objectives:
        epochs = VAE_EPOCH_FACTOR * config.training.epochs
        patience = config.training.early_stopping_patience
        longer = {"epochs": epochs}
        if patience is not None:  # its validation loss also stays on a plateau longer
            longer["early_stopping_patience"] = VAE_EPOCH_FACTOR * patience
        config = config.model_copy(update={"training": config.training.model_copy(update=longer)})
        if notes is not None:
            notes.append(f"{epochs} epochs: a vae's inputs take longer to agree on a code than a classifier")
    generative = [o for o in config.objectives if o.name in ("vae", "autoencoder")]
    for objective in generative:
        objective.options.update(generative_options(objective.name, table, schema, config))
    if probe and "supervised" in objectives and label is not None:
        config = _fit_setup_to_inputs(
            config, table, schema, label, notes if notes is not None else [], fusion
        )
    return config


def generative_options(name: str, table: Table, schema: TableSchema, config: RunConfig) -> dict[str, Any]:
    """vae / autoencoder defaults from the table: audio decoders rebuild as many frames as the longest of a
    few sampled clips (not audio.max_seconds' worth of padding), and the vae's KL warm-up lasts about a
    quarter of the run's steps."""
    options: dict[str, Any] = {}
    audio = config.data.preprocessing.audio
    seconds = []
    for source in _sample_sources(table, schema.columns_of(Modality.AUDIO)):
        import soundfile as sf

        try:
            info = sf.info(str(source))
            seconds.append(info.frames / info.samplerate)
        except (RuntimeError, OSError, sf.LibsndfileError):
            continue
    if seconds:
        longest = min(max(seconds), audio.max_seconds)
        options["audio_frames"] = min(1 + int(longest * audio.sample_rate) // audio.hop_length, 512)
    if name == "vae":
        steps_per_epoch = max(1, math.ceil(0.8 * len(table) / config.training.batch_size))
        options["kl_warmup_steps"] = max(1, round(0.25 * config.training.epochs * steps_per_epoch))
        images = schema.columns_of(Modality.IMAGE)
        if images:
            options["image_likelihood"] = "laplace"
            options["cross_prior_components"] = VAE_CROSS_PRIOR_COMPONENTS
            options["cross_prior_inputs"] = images
        options["fitted_prior_components"] = VAE_PRIOR_COMPONENTS
    return options


# A multimodal vae's posteriors align slowly: on AV-Digits (bench/generation.py, mopoe, init's other
# defaults) audio→image coherence, judged by a blur-tolerant digit classifier, was 0.85 after 30 epochs and
# 0.98 after 60. Early stopping waits as many times longer: with a patience of 5 one poe run stopped at
# epoch 27 on a plateau of the validation loss (audio→image 0.78, sharp judge) where the same config ran
# 58-60 epochs in other runs (0.88-0.92).
VAE_EPOCH_FACTOR = 3

# On AV-Digits (mopoe, 30 epochs) a Laplace image likelihood raised audio→image coherence judged by a
# classifier of sharp digits from 0.10 to 0.66 (Gaussian: a blurred average that judge reads as "8"), and
# unconditional samples from a 10-component mixture fitted to the validation codes raised joint coherence
# from 0.11 (N(0, I)) to 0.70. See bench/generation.py and README "Autoencoders and VAEs".
VAE_PRIOR_COMPONENTS = 10

# Generating an image from a clip draws the image's code from a 10-component mixture density network given
# the clip's code (objectives.vae, "Cross-modal priors"). On AV-Digits (bench/generation.py, 60 epochs) a
# classifier of sharp digits recognised 0.93-0.97 of those images, sampled or at temperature 0 (with the
# prior refitted after training; 0.87-0.93 sampled without), against 0.66-0.71 decoded from the clip's own
# posterior, by the same models. Sound generated from an image
# through an audio cross prior was recognised less often than from the image's posterior in all three
# joints (0.51-0.67 against 0.70-0.82), so init gives images one and leaves audio to the posterior.
VAE_CROSS_PRIOR_COMPONENTS = 10

# An interaction between inputs is learned later than what either input says alone, after plateaus of the
# validation loss: on the AV-Digits question table (bench/complementary.py, seed 0) FiLM reached 0.945
# test accuracy in 20 epochs, 0.968 in 40 (early stopping, patience 5, ended it at 36; three seeds
# 0.968-0.970), and 0.987 in 60 epochs without early stopping. The best epoch by validation loss is still
# the one kept.
COMPLEMENTARY_EPOCH_FACTOR = 3


def _fit_setup_to_inputs(
    config: RunConfig,
    table: Table,
    schema: TableSchema,
    label: str,
    notes: list[str],
    fusion_given: str | None = None,
) -> RunConfig:
    """Gated fusion + modality dropout + per-input heads when the inputs are redundant; FiLM without
    them, trained for longer, when they are complementary (see `polyfuse.probe`). `fusion_given` (the
    user's `--fusion`) replaces only the fusion: the rest of the setup still fits the inputs."""
    from polyfuse.data.preprocess import infer_task
    from polyfuse.probe import REDUNDANT_SKILL, probe_inputs

    named = f"fusion {fusion_given} (given)" if fusion_given else "fusion gated"
    if len(schema.input_names()) < 2:
        return config
    if infer_task(table.frame[label].tolist()) != "classification":
        notes.append(f"{named}: '{label}' is not a classification target, so the inputs were not probed")
        return config
    probe = probe_inputs(table, schema, label, config.data.preprocessing)
    if probe is None:
        notes.append(f"{named}: too few labelled training rows to probe the inputs")
        return config
    if not probe.complementary:
        notes.append(
            f"{named}, modality dropout, per-input heads: redundant inputs ({probe.summary()}; "
            f"at least one reaches skill {REDUNDANT_SKILL} alone)"
        )
        return config
    # of the default epochs, not of a count another objective (a vae's) already raised
    epochs = max(config.training.epochs, COMPLEMENTARY_EPOCH_FACTOR * TrainingConfig().epochs)
    named = f"fusion {fusion_given} (given)" if fusion_given else "fusion film"
    notes.append(
        f"{named}, no modality dropout, no per-input heads, {epochs} epochs without early stopping: "
        "complementary inputs "
        f"({probe.summary()}; none reaches skill {REDUNDANT_SKILL} alone, so the answer needs them together)"
    )
    return config.model_copy(
        update={
            "fusion": config.fusion.model_copy(
                update={"name": fusion_given or "film", "modality_dropout": 0.0}
            ),
            "training": config.training.model_copy(
                update={"aux_loss_weight": 0.0, "epochs": epochs, "early_stopping_patience": None}
            ),
        }
    )


def _objective_config(name: str, label: str | None) -> ObjectiveConfig:
    """Defaults per objective; alignment objectives (and the vae's alignment term) read the label column
    when the table has one."""
    if name in ("contrastive", "matching", "vae") and label is not None:
        return ObjectiveConfig(name=name, options={"label_column": label})
    return ObjectiveConfig(name=name)


def relative_to_config(config: RunConfig, config_path: Path) -> RunConfig:
    """The same config with data.table relative to the config file's folder (how `init` writes it), so a
    project folder can move as a whole."""
    try:
        relative = Path(os.path.relpath(config.data.table.resolve(), config_path.resolve().parent))
    except ValueError:  # another drive on Windows
        return config
    return config.model_copy(update={"data": config.data.model_copy(update={"table": relative})})


def suggest_preprocessing(table: Table, schema: TableSchema) -> PreprocessingConfig:
    """Keep small images at their native size and grey when they are grey; resample audio to the most
    common native rate (capped at 16 kHz, where speech features stop gaining)."""
    from PIL import Image

    config = PreprocessingConfig()
    images = _sample_sources(table, schema.columns_of(Modality.IMAGE))
    if images:
        sizes: Counter[tuple[int, int]] = Counter()
        modes: Counter[str] = Counter()
        for source in images:
            try:
                with Image.open(source) as im:
                    sizes[(im.height, im.width)] += 1
                    modes["L" if im.mode in ("L", "1", "I;16", "I") else "RGB"] += 1
            except (OSError, ValueError):
                continue  # validation reports unreadable files with their rows
        if sizes:
            (height, width), _ = sizes.most_common(1)[0]
            mode = modes.most_common(1)[0][0]
            size = (height, width) if max(height, width) <= 64 else (64, 64)
            config.image = ImageConfig(mode="L" if mode == "L" else "RGB", size=size)
    sounds = _sample_sources(table, schema.columns_of(Modality.AUDIO))
    if sounds:
        import soundfile as sf

        rates: Counter[int] = Counter()
        for source in sounds:
            try:
                rates[sf.info(str(source)).samplerate] += 1
            except (RuntimeError, OSError, sf.LibsndfileError):
                continue
        if rates:
            rate = min(rates.most_common(1)[0][0], 16_000)
            # 25 ms windows, 10 ms hops, an FFT of the next power of two; fewer mel bands at low rates.
            # (20 ms hops halved the audio CNN's cost but lost accuracy on AV-Digits-N's noisy clips:
            # concat fused without the image 0.897 / 0.973 on two seeds, against 0.987 / 0.987.)
            win = int(0.025 * rate)
            config.audio = AudioConfig(
                sample_rate=rate,
                win_length=win,
                hop_length=int(0.010 * rate),
                n_fft=1 << (win - 1).bit_length(),
                n_mels=40 if rate <= 8000 else 64,
                max_seconds=10.0,
            )
    return config


def _sample_sources(table: Table, columns: list[str]) -> list[Path]:
    found: list[Path] = []
    for column in columns:
        for value in table.frame[column].tolist():
            if len(found) >= SNIFF_FILES:
                return found
            if is_missing(value):
                continue
            try:
                source = resolve_media(value, table.base_dir, allow_base64=False)
            except MediaError:
                continue
            if isinstance(source, Path) and source.is_file():
                found.append(source)
    return found


def check_config(config: RunConfig, *, check_table: bool = True) -> list[Problem]:
    """Everything wrong with a parsed config that can be known without training: registry names,
    constructor options, the table and its columns. Pydantic errors are raised earlier, all together."""
    problems: list[Problem] = []
    for name, encoder in config.encoders.items():
        if encoder.name not in ENCODERS:
            problems.append(
                Problem(
                    f"field 'encoders.{name}.name': unknown encoder '{encoder.name}'"
                    f"{did_you_mean(encoder.name, list_encoders())}; choose one of {list_encoders()}"
                )
            )
            continue
        problems += _check_options(f"encoders.{name}.options", ENCODERS[encoder.name], encoder.options)
    if config.fusion.name not in FUSIONS:
        problems.append(
            Problem(
                f"field 'fusion.name': unknown fusion '{config.fusion.name}'"
                f"{did_you_mean(config.fusion.name, list_fusions())}; choose one of {list_fusions()}"
            )
        )
    else:
        problems += _check_options("fusion.options", FUSIONS[config.fusion.name], config.fusion.options)
    for target in config.heads:
        if target not in config.data.targets:
            problems.append(
                Problem(f"field 'heads.{target}': not a target; targets: {list(config.data.targets)}")
            )
    problems += check_objectives(config)
    if check_table:
        try:
            table = read_table(config.data.table, encoding=config.data.encoding)
        except DataError as e:
            return problems + [
                Problem(f"field 'data.table': {p.message}", p.row, p.column, p.file, p.fix)
                for p in e.problems
            ]
        columns = list(map(str, table.frame.columns))
        for target in config.data.targets:
            if target not in columns:
                problems.append(unknown_column_problem("data.targets", target, columns, "target"))
        kinds = [k.value for k in (*Modality, *Role)]
        for column, kind in config.data.columns.items():
            if column not in columns:
                problems.append(unknown_column_problem(f"data.columns.{column}", column, columns))
            elif kind not in kinds:
                problems.append(
                    Problem(
                        f"field 'data.columns.{column}': unknown kind '{kind}'{did_you_mean(kind, kinds)}; "
                        f"choose one of {kinds}"
                    )
                )
        try:
            from polyfuse.data.prepare import resolve_schema

            # Entries reported above are left out, so each mistake is reported once.
            known = {c: k for c, k in config.data.columns.items() if c in columns and k in kinds}
            data = config.data.model_copy(
                update={
                    "columns": known,
                    "targets": {t: v for t, v in config.data.targets.items() if t in columns},
                }
            )
            schema = resolve_schema(table, data)
            inputs = schema.input_names()
            problems += table_problems(config.model_copy(update={"data": data}), table, schema)
            problems += build_problems(config, inputs, schema)
            for name, encoder in config.encoders.items():
                if name not in inputs:
                    problems.append(
                        Problem(
                            f"field 'encoders.{name}': not an input of the table; inputs: {sorted(inputs)}"
                        )
                    )
                elif not encoder.name.startswith(inputs[name].value + "."):
                    problems.append(
                        Problem(
                            f"field 'encoders.{name}.name': '{encoder.name}' does not encode {inputs[name].value}"
                        )
                    )
            problems += objective_value_problems(config, inputs)
        except DataError as e:
            problems += e.problems
    else:
        inputs = {n: Modality(e.name.split(".")[0]) for n, e in config.encoders.items() if e.name in ENCODERS}
        problems += build_problems(config, inputs, None)
    return problems


def check_objectives(config: RunConfig) -> list[Problem]:
    """Objective names, options and the targets they need (without the table)."""
    problems: list[Problem] = []
    if not config.objectives:
        problems.append(Problem("field 'objectives': name at least one objective, e.g. supervised"))
    names = [o.name for o in config.objectives]
    for i, objective in enumerate(config.objectives):
        field = f"objectives.{i}"
        if objective.name not in OBJECTIVES:
            problems.append(
                Problem(
                    f"field '{field}.name': unknown objective '{objective.name}'; choose one of {list_objectives()}"
                )
            )
            continue
        if names.count(objective.name) > 1 and names.index(objective.name) == i:
            problems.append(Problem(f"field '{field}.name': objective '{objective.name}' is listed twice"))
        allowed = objective_options(objective.name)
        for key in objective.options:
            if key not in allowed:
                problems.append(
                    Problem(f"field '{field}.options.{key}': not an option; options are {allowed}")
                )
        label = objective.options.get("label_column")
        if label is not None and label not in config.data.targets:
            problems.append(
                Problem(
                    f"field '{field}.options.label_column': '{label}' must also be listed under data.targets "
                    f"(targets: {list(config.data.targets)})"
                )
            )
        wanted = objective.options.get("targets")
        for target in wanted or []:
            if target not in config.data.targets:
                problems.append(
                    Problem(f"field '{field}.options.targets': '{target}' is not under data.targets")
                )
    if "supervised" in names and not config.data.targets:
        problems.append(
            Problem(
                "field 'data.targets': the supervised objective needs at least one target column "
                "(polyfuse init --target COL), or train an alignment model (objectives: [contrastive])"
            )
        )
    return problems


def objective_value_problems(config: RunConfig, inputs: dict[str, Modality]) -> list[Problem]:
    """Build each objective on dummy sizes (every input 8 wide, each target a two-class label), so a bad
    option value (embed_dim 0, hard_negatives 2, an anchor that is not an input) is a field error now,
    not a traceback once the data is featurised."""
    from polyfuse.data.preprocess import TargetSpec
    from polyfuse.objectives import create_objective
    from polyfuse.objectives.base import ObjectiveContext

    context = ObjectiveContext(
        inputs=dict(sorted(inputs.items())),
        input_dims={n: 8 for n in inputs},
        fused_dim=config.fusion.output_dim,
        targets={
            t: TargetSpec(column=t, task=task or "classification", classes=["a", "b"])
            for t, task in config.data.targets.items()
        },
        config=config,
    )
    problems = []
    for i, objective in enumerate(config.objectives):
        if objective.name not in OBJECTIVES or any(
            k not in objective_options(objective.name) for k in objective.options
        ):
            continue  # reported by check_objectives
        try:
            create_objective(objective.name, context, **objective.options)
        except (ValueError, TypeError) as e:
            problems.append(Problem(f"field 'objectives.{i}.options': {e}"))
    return problems


def _check_options(field: str, constructor: Any, options: dict[str, Any]) -> list[Problem]:
    parameters = inspect.signature(constructor).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return [
        Problem(
            f"field '{field}.{key}': not an option; options are {[p for p in parameters if p not in ('input_dims', 'output_dim')]}"
        )
        for key in options
        if key not in parameters and not accepts_any
    ]
