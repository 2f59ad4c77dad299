"""``train(config)``: stage 1, stage 2 or both, as ``python train.py`` runs them (same run folder,
checkpoints and resume rules)."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import datetime
from pathlib import Path

from ..checkpoints import band_folder, read_checkpoint, recorded_wavelengths
from ..datasets import had100_manifest
from ..errors import FersError, ParameterError
from ..fen import FEN
from ..outputs import ensure_writable_dir
from ..reference import resolve_protocol, seed_run
from ..selection import TestSelectionSet
from ..training_data import load_training_data
from .config import DEFAULTS, TrainConfig
from .distributed import Distributed, setup_distributed, shutdown_distributed
from .loop import TrainingOptions, fit
from .run_folder import (PATH_FIELDS, absolute, default_run_dir, load_run_state, manifest_difference,
                         prepare_run_dir, read_run_config, resume_settings, run_config, write_run_config)
from .stages import Stage1, Stage2, load_stage1_for_stage2

# What a run reports (settings, epochs, warnings); train.py prints it (fers.cli.common.console_logging).
log = logging.getLogger("fers.training")


def protocol_settings(stage_name: str, config) -> dict:
    """The settings of one stage from ``config`` (a :class:`TrainConfig` or parsed flags) and its
    ``protocol`` (explicit values win); older run configurations without the newer settings
    resolve as they trained."""
    get = lambda name, default=None: getattr(config, name, default)  # noqa: E731
    return resolve_protocol(stage_name, get("protocol", "default"), config.input_channel, config.sensor,
                            seed=get("seed"), bce_input=get("bce_input"), spatial_bn=get("spatial_bn"),
                            selection=get("selection"), select_on_test=get("select_on_test", False),
                            data_order=get("data_order"), test_sensor=get("test_sensor"))


def training_wavelengths(config, stage_name: str) -> list | None:
    """The C band centres (nm) the exported checkpoints record: the first C of the `wavelengths` file
    (the model takes the first C bands of every scene), else for stage 2 those of the stage-1 files."""
    channels, path = config.input_channel, getattr(config, "wavelengths", None)
    if path:
        from ..io import load_wavelengths

        values = load_wavelengths(path)
        if values is None or len(values) < channels:
            raise ParameterError(f"`wavelengths` {path}: {0 if values is None else len(values)} band centres for a "
                                 f"model of {channels} bands; give at least {channels} (the first C are recorded)")
        return [float(v) for v in values[:channels]]
    stage1 = band_folder(config.checkpoint_dir, channels) / "enc.pt"
    if stage_name == "stage2" and stage1.is_file():
        return recorded_wavelengths(read_checkpoint(stage1))
    return None


def _agreed_run_dir(dist: Distributed, path) -> Path:
    """Rank 0 picks the default run folder; every process uses it."""
    if dist.world_size > 1:
        import torch.distributed

        holder = [str(path)]
        torch.distributed.broadcast_object_list(holder, src=0)
        path = holder[0]
    return Path(path)


def train_stage(stage_name: str, config: TrainConfig, dist: Distributed, resume_dir=None,
                recorded: dict | None = None, changes: dict | None = None) -> dict:
    """Train one stage (fresh, or resuming ``resume_dir`` with its ``recorded`` config.json and the
    honoured ``changes`` from :func:`resume_settings`). Returns :func:`fit`'s summary."""
    fresh = resume_dir is None
    channels = config.input_channel
    settings = protocol_settings(stage_name, config)
    wavelengths = training_wavelengths(config, stage_name)
    seed_run(settings)
    state = None if fresh else load_run_state(resume_dir)  # None: killed before its first epoch ended
    if state is not None and config.epochs < state["epoch"]:
        raise ParameterError(f"`epochs` {config.epochs}: the run in {resume_dir} has already completed "
                             f"{state['epoch']} epochs; pass `epochs` {state['epoch']} or more, or start a new run")
    restored = state is not None  # the networks come from the state, not from ImageNet/stage-1 files
    fen = None
    if stage_name == "stage2":
        fen = (FEN(channels, recorded["network"]["fen_backbone"]) if restored
               else load_stage1_for_stage2(config.checkpoint_dir, channels))
    data = load_training_data(config.data_path, channels, config.img_size, config.sensor, config.crop,
                              config.crops_per_scene, settings["seed"], config.workers)
    if not fresh and data.manifest != recorded["data"]["manifest"]:
        difference = manifest_difference(recorded["data"]["manifest"], data.manifest)
        if "data_path" in (changes or {}):
            raise FersError(f"{config.data_path}: does not hold the training files of the run in {resume_dir} "
                            f"({difference}); pass the folder with the recorded files, or start a new run")
        raise FersError(f"{config.data_path}: the training data changed since the run in {resume_dir} began "
                        f"(files or SHA-256 differ from its config.json; {difference}); restore them or start a new run")
    options = TrainingOptions.from_config(config, settings)
    test_set = None
    if options.selection == "test_auc" or options.log_test_auc:  # read and validated once per run
        test_set = TestSelectionSet(had100_manifest(config.data_path, settings["test_sensor"]), channels, log.info)
    pretrained = not config.no_pretrained
    if stage_name == "stage1":
        stage = Stage1(channels, config.backbone, dist.device, settings["bce_input"], config.backbone_weights,
                       pretrained, load_backbone=not restored)
    else:
        stage = Stage2(channels, fen, dist.device, settings["spatial_bn"], config.backbone_weights, pretrained,
                       load_backbone=not restored)
    stage.wavelengths = wavelengths
    if fresh:
        run_dir = _agreed_run_dir(dist, config.run_dir or default_run_dir(stage_name, channels))
    else:
        run_dir = Path(resume_dir)
        if restored:
            stage.weights_source = recorded["network"].get("backbone_weights", stage.weights_source)
    prepare_run_dir(run_dir, fresh)  # every process checks, so none waits for a process that stopped
    ensure_writable_dir(band_folder(config.checkpoint_dir, channels), "`checkpoint_dir`")
    dist.barrier()
    if dist.is_main:
        if fresh:
            write_run_config(run_dir, run_config(stage, config.to_dict(), data, options, dist))
        else:  # record every resume, and what it changed
            recorded["args"].update({flag: new for flag, (_, new) in (changes or {}).items()})
            recorded["data"]["source"] = data.source
            recorded.setdefault("resumes", []).append(
                {"time": datetime.now().isoformat(timespec="seconds"), "after_epoch": state["epoch"] if state else 0,
                 "cwd": os.getcwd(), "device": str(dist.device),
                 "changed": {flag: {"recorded": old, "now": new} for flag, (old, new) in (changes or {}).items()}})
            write_run_config(run_dir, recorded)
            for flag, (old, new) in (changes or {}).items():
                log.info(f"resume: `{flag}` {new} (recorded: {old})")
        log.info(f"{stage_name}: {len(data)} crops of {config.img_size}×{config.img_size}×{channels} from "
              f"{data.source}; {options.epochs} epochs, batch {options.batch_size}, device {dist.device}"
              f"{f' × {dist.world_size} processes' if dist.world_size > 1 else ''}; selection "
              f"{options.selection}{' (ON TEST LABELS, as the reference)' if options.selection == 'test_auc' else ''}"
              f"; protocol {settings['protocol']}, seed {settings['seed']} ({settings['seed_source']}), data order "
              f"{settings['data_order']}; run folder {run_dir}")
        for note in settings["notes"]:
            log.info(f"note: {note}")
    summary = fit(stage, data, options, run_dir, dist, config.checkpoint_dir, state, test_set)
    if dist.is_main:
        log.info(f"{stage_name} done: epoch {summary['selected_epoch']} exported to {summary['checkpoint_folder']} "
              f"(selection: {summary['selection']}); run folder {run_dir}")
    return summary


def _config_and_given(config, overrides: dict) -> tuple[TrainConfig, set]:
    """The config to run and the settings its caller gave explicitly (what ``resume`` checks)."""
    names = {item.name for item in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names) or sorted(set(config) - names if isinstance(config, dict) else ())
    if unknown:
        raise ParameterError(f"`{unknown[0]}`: not a training setting (see fers.training.TrainConfig)")
    if config is None:
        config, given = TrainConfig(), set()
    elif isinstance(config, dict):
        config, given = TrainConfig.from_dict(config), set(config)
    elif isinstance(config, TrainConfig):
        given = {name for name in names if getattr(config, name) != getattr(DEFAULTS, name)}
    else:
        raise TypeError(f"config must be a TrainConfig, a dict or None, not {type(config).__name__}")
    return config.replace(**overrides), given | set(overrides)


def train(config: TrainConfig | dict | None = None, /, *, given: set | None = None, **overrides) -> dict:
    """Train stage 1, stage 2 or both (``config.stage``: ``"1"``, ``"2"``, ``"all"``) exactly as
    ``python train.py`` does, or continue the run in ``config.resume``.

    ``config``: a :class:`TrainConfig`, a dict of its fields, or None (the defaults); ``overrides``
    replace fields. ``given``: the settings chosen explicitly, which a resumed run checks against its
    recorded ones (default: those passed as dict keys or overrides, or differing from the defaults).
    Returns ``{stage name: summary}`` (selected epoch, metric, export folder). Progress is logged to
    the ``fers.training`` logger (parameter names in backquotes), the progress bar drawn by tqdm. Raises
    :class:`~fers.errors.FersError` on bad input and :class:`TrainingInterrupted` on SIGINT/SIGTERM.
    """
    config, inferred = _config_and_given(config, overrides)
    given = inferred if given is None else set(given)
    config.validate()
    # absolute paths: the run (and a resume command) work from any folder
    config = config.replace(**{name: absolute(getattr(config, name)) for name in PATH_FIELDS})
    dist = setup_distributed(config.device)
    try:
        if config.amp and dist.device.type != "cuda":
            raise ParameterError(f"`amp`: mixed precision runs on a CUDA device, and this run uses {dist.device}; "
                                 "drop `amp` (CPU training stays float32)")
        if config.resume:
            run_dir = Path(absolute(config.resume))
            recorded = read_run_config(run_dir)
            resumed, changes = resume_settings(recorded, config, given, run_dir)
            summaries = {recorded["stage"]: train_stage(recorded["stage"], resumed, dist, run_dir, recorded, changes)}
            if recorded["stage"] == "stage1" and recorded["args"].get("stage") == "all":
                resumed = resumed.replace(run_dir=str(run_dir.parent / "stage2") if resumed.run_dir else None)
                summaries["stage2"] = train_stage("stage2", resumed, dist)
            return summaries
        summaries = {}
        for stage_name in config.stages:
            stage_config = config
            if config.run_dir and len(config.stages) > 1:
                stage_config = config.replace(run_dir=str(Path(config.run_dir) / stage_name))
            summaries[stage_name] = train_stage(stage_name, stage_config, dist)
        return summaries
    finally:
        shutdown_distributed(dist)
