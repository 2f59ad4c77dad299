"""Training command lines: ``train_FERD/train.py`` (stage 1), ``train_FERS/train.py`` (stage 2) and
the top-level ``train.py --stage 1|2|all``. Flag names follow the reference release."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path

from ..checkpoints import band_folder
from ..datasets import had100_manifest
from ..errors import FersError, cli_entry
from ..fen import FEN
from ..io import ensure_writable_dir
from ..reference import resolve_protocol, seed_run
from ..selection import TestSelectionSet
from ..training import (Stage1, Stage2, TrainConfig, TrainingInterrupted, TrainingOptions, default_run_dir, fit,
                        load_run_state, load_stage1_for_stage2, prepare_run_dir, read_run_config, run_config,
                        setup_distributed, shutdown_distributed, write_run_config)
from ..training_data import load_training_data
from ..utils import REPO_ROOT, default_threads
from .common import check_positive

STAGES = {"1": "stage1", "2": "stage2"}
# Paths recorded in config.json; stored absolute so that a run resumes from any folder.
PATH_FLAGS = ("data_path", "checkpoint_dir", "run_dir", "backbone_weights")
# With --resume: flags that never change the trained weights (taken from this command line) ...
RESUME_FREE = ("device", "workers", "no_progress")
# ... and flags that are checked, then honoured (recorded in config.json under "resumes").
RESUME_HONOURED = ("data_path", "checkpoint_dir", "epochs")


def add_training_arguments(parser: argparse.ArgumentParser, stages: tuple, main: bool = False) -> None:
    """The flags of :class:`TrainConfig`'s fields, in its order: ``stages`` says which stage-specific
    ones apply; ``main``: the top-level ``train.py`` (with ``--stage``)."""
    for item in dataclasses.fields(TrainConfig):
        meta = item.metadata
        if not meta["cli"] or (meta["main_only"] and not main) or not set(meta["stages"]) & set(stages):
            continue
        options = {"default": item.default, "help": meta["help"]}
        if isinstance(item.default, bool):
            options["action"] = "store_true"
        else:
            kind = meta["type"] or (type(item.default) if isinstance(item.default, (int, float)) else None)
            options.update({k: v for k, v in (("type", kind), ("choices", meta["choices"]),
                                              ("metavar", meta["metavar"])) if v is not None})
        parser.add_argument(f"--{item.name}", **options)


def _check(parser, args) -> None:
    check_positive(parser, input_channel=args.input_channel, epochs=args.epochs, batch_size=args.batch_size,
                   img_size=args.img_size, workers=args.workers, crops_per_scene=args.crops_per_scene)
    if args.img_size % 8:
        parser.error(f"--img_size {args.img_size}: must be a multiple of 8")
    if not args.lr > 0:
        parser.error("--lr must be positive")
    if not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")


def _options(args, settings: dict) -> TrainingOptions:
    return TrainingOptions.from_config(TrainConfig.from_dict(vars(args)), settings)


def protocol_settings(stage_name: str, args) -> dict:
    """The settings of one stage from its flags and ``--protocol`` (explicit flags win); older run
    configurations without the newer flags resolve as they trained."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    return resolve_protocol(stage_name, get("protocol", "default"), args.input_channel, args.sensor,
                            seed=get("seed"), bce_input=get("bce_input"), spatial_bn=get("spatial_bn"),
                            selection=get("selection"), select_on_test=get("select_on_test", False),
                            data_order=get("data_order"), test_sensor=get("test_sensor"))


def _agreed_run_dir(dist, path) -> Path:
    """Rank 0 picks the default run folder; every process uses it."""
    if dist.world_size > 1:
        import torch.distributed

        holder = [str(path)]
        torch.distributed.broadcast_object_list(holder, src=0)
        path = holder[0]
    return Path(path)


def _absolute(path) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(str(path)))


def given_flags(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the flags typed on the command line (argparse defaults excluded): ``parser``
    is a fresh parser of the same command, whose defaults are replaced by ``SUPPRESS`` here."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _recorded_cwd(recorded: dict, run_dir: Path) -> str:
    """The working folder the run was started from: recorded since config.json has ``cwd``; for older
    runs, inferred from a relative ``--run_dir`` (``<cwd>/<run_dir>`` is the run folder), else this one."""
    if recorded.get("cwd"):
        return recorded["cwd"]
    old = recorded["args"].get("run_dir")
    if old and not os.path.isabs(old):
        parts = Path(os.path.normpath(old)).parts
        if ".." not in parts and run_dir.parts[-len(parts):] == parts:
            return str(Path(*run_dir.parts[:-len(parts)]))
    return os.getcwd()


# Flags recorded as None when not given, resolved by --protocol (fers.reference.resolve_protocol).
PROTOCOL_RESOLVED = ("seed", "bce_input", "spatial_bn", "selection", "data_order", "test_sensor")


def resume_settings(recorded: dict, args, given: set, run_dir: Path):
    """The arguments of a resumed run: the recorded ones (relative paths of older runs resolved against
    the run's working folder) with this command line's :data:`RESUME_FREE` flags, and the checked
    :data:`RESUME_HONOURED` flags that were given. Returns ``(namespace, {flag: (old, new)})``; any other
    given flag whose value differs from the recorded one is refused with one line."""
    resumed = argparse.Namespace(**recorded["args"])
    cwd = _recorded_cwd(recorded, run_dir)
    for flag in PATH_FLAGS:
        value = getattr(resumed, flag, None)
        if value is not None and not os.path.isabs(os.path.expanduser(value)):
            setattr(resumed, flag, os.path.normpath(os.path.join(cwd, os.path.expanduser(value))))
    changes = {}
    for flag in sorted(given - {"resume", *RESUME_FREE}):
        new = _absolute(getattr(args, flag)) if flag in PATH_FLAGS else getattr(args, flag)
        missing = not hasattr(resumed, flag)
        old = getattr(resumed, flag, None)
        if old is None and flag in PROTOCOL_RESOLVED:  # not given then: compare with what the protocol chose
            old = (recorded.get("protocol") or {}).get(flag, recorded.get(flag))
            if new == old:
                continue
        if flag == "run_dir":
            if new not in (old, str(run_dir)):
                raise FersError(f"--run_dir {new}: --resume continues the run in its own folder {run_dir}; "
                                "drop --run_dir (or drop --resume to start a new run there)")
        elif flag in RESUME_HONOURED:
            if new != old:
                changes[flag] = (old, new)
                setattr(resumed, flag, new)
        elif missing or new != old:
            shown = "not recorded (the run predates the flag)" if missing else f"recorded {old}"
            raise FersError(f"--{flag} {new}: would change the run in {run_dir} ({shown}); drop --{flag} "
                            "to continue it, or start a new run with another --run_dir")
    for flag in RESUME_FREE:
        setattr(resumed, flag, getattr(args, flag))
    resumed.resume = str(run_dir)
    if "data_path" not in changes and not Path(resumed.data_path).is_dir():
        raise FersError(f"{resumed.data_path}: the training data folder of the run in {run_dir} is not there; "
                        "pass --data_path with the folder that now holds the same files")
    return resumed, changes


def _manifest_difference(recorded: list, current: list) -> str:
    old = {m["file"]: m["sha256"] for m in recorded}
    new = {m["file"]: m["sha256"] for m in current}
    parts = []
    for label, names in (("missing", sorted(set(old) - set(new))), ("not in the run", sorted(set(new) - set(old))),
                         ("content changed", sorted(n for n in set(old) & set(new) if old[n] != new[n]))):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts) or "shapes differ"


def train_stage(stage_name: str, args, dist, resume_dir=None, recorded: dict | None = None,
                changes: dict | None = None) -> dict:
    """Train one stage with parsed ``args`` (fresh, or resuming ``resume_dir`` with ``recorded`` config and
    the honoured ``changes`` from :func:`resume_settings`)."""
    fresh = resume_dir is None
    channels = args.input_channel
    settings = protocol_settings(stage_name, args)
    seed_run(settings)
    state = None if fresh else load_run_state(resume_dir)  # None: killed before its first epoch ended
    if state is not None and args.epochs < state["epoch"]:
        raise FersError(f"--epochs {args.epochs}: the run in {resume_dir} has already completed {state['epoch']} "
                        f"epochs; pass --epochs {state['epoch']} or more, or start a new run")
    restored = state is not None  # the networks come from the state, not from ImageNet/stage-1 files
    fen = None
    if stage_name == "stage2":
        fen = (FEN(channels, recorded["network"]["fen_backbone"]) if restored
               else load_stage1_for_stage2(args.checkpoint_dir, channels))
    data = load_training_data(args.data_path, channels, args.img_size, args.sensor, args.crop,
                              args.crops_per_scene, settings["seed"], args.workers)
    if not fresh and data.manifest != recorded["data"]["manifest"]:
        difference = _manifest_difference(recorded["data"]["manifest"], data.manifest)
        if "data_path" in (changes or {}):
            raise FersError(f"{args.data_path}: does not hold the training files of the run in {resume_dir} "
                            f"({difference}); pass the folder with the recorded files, or start a new run")
        raise FersError(f"{args.data_path}: the training data changed since the run in {resume_dir} began "
                        f"(files or SHA-256 differ from its config.json; {difference}); restore them or start a new run")
    options = _options(args, settings)
    test_set = None
    if options.selection == "test_auc" or options.log_test_auc:  # read and validated once per run
        test_set = TestSelectionSet(had100_manifest(args.data_path, settings["test_sensor"]), channels)
    pretrained = not args.no_pretrained
    if stage_name == "stage1":
        stage = Stage1(channels, args.backbone, dist.device, settings["bce_input"], args.backbone_weights,
                       pretrained, load_backbone=not restored)
    else:
        stage = Stage2(channels, fen, dist.device, settings["spatial_bn"], args.backbone_weights, pretrained,
                       load_backbone=not restored)
    if fresh:
        run_dir = _agreed_run_dir(dist, args.run_dir or default_run_dir(stage_name, channels))
    else:
        run_dir = Path(resume_dir)
        if restored:
            stage.weights_source = recorded["network"].get("backbone_weights", stage.weights_source)
    prepare_run_dir(run_dir, fresh)  # every process checks, so none waits for a process that stopped
    ensure_writable_dir(band_folder(args.checkpoint_dir, channels), "--checkpoint_dir")
    dist.barrier()
    if dist.is_main:
        if fresh:
            write_run_config(run_dir, run_config(stage, vars(args), data, options, dist))
        else:  # record every resume, and what it changed
            recorded["args"].update({flag: new for flag, (_, new) in (changes or {}).items()})
            recorded["data"]["source"] = data.source
            recorded.setdefault("resumes", []).append(
                {"time": datetime.now().isoformat(timespec="seconds"), "after_epoch": state["epoch"] if state else 0,
                 "cwd": os.getcwd(), "device": str(dist.device),
                 "changed": {flag: {"recorded": old, "now": new} for flag, (old, new) in (changes or {}).items()}})
            write_run_config(run_dir, recorded)
            for flag, (old, new) in (changes or {}).items():
                print(f"resume: --{flag} {new} (recorded: {old})")
        print(f"{stage_name}: {len(data)} crops of {args.img_size}×{args.img_size}×{channels} from "
              f"{data.source}; {options.epochs} epochs, batch {options.batch_size}, device {dist.device}"
              f"{f' × {dist.world_size} processes' if dist.world_size > 1 else ''}; selection "
              f"{options.selection}{' (ON TEST LABELS, as the reference)' if options.selection == 'test_auc' else ''}"
              f"; protocol {settings['protocol']}, seed {settings['seed']} ({settings['seed_source']}), data order "
              f"{settings['data_order']}; run folder {run_dir}")
        for note in settings["notes"]:
            print(f"note: {note}")
    summary = fit(stage, data, options, run_dir, dist, args.checkpoint_dir, state, test_set)
    if dist.is_main:
        print(f"{stage_name} done: epoch {summary['selected_epoch']} exported to {summary['checkpoint_folder']} "
              f"(selection: {summary['selection']}); run folder {run_dir}")
    return summary


def _interrupted(error: TrainingInterrupted) -> int:
    saved = (f"{error.run_dir}/state.pt holds the last completed epoch ({error.epochs_done})" if error.epochs_done
             else "no epoch had completed yet (resuming starts the run again)")
    print(f"\ninterrupted by signal {error.signum}; {saved}. Resume with:\n"
          f"  python {REPO_ROOT / 'train.py'} --resume {error.run_dir}", file=sys.stderr)
    return 128 + error.signum


def _run(stages: list[str], args, given: set = frozenset()) -> int:
    """Fresh run of one stage or of stage 1 then stage 2; or resume a recorded run (``given``: the flags
    typed on the command line, see :func:`given_flags`). The process group (under torchrun) is joined
    once for all stages."""
    default_threads()
    for flag in PATH_FLAGS:  # absolute paths: the run (and the printed resume command) work from any folder
        setattr(args, flag, _absolute(getattr(args, flag, None)))
    dist = setup_distributed(args.device)
    try:
        if args.resume:
            run_dir = Path(_absolute(args.resume))
            recorded = read_run_config(run_dir)
            resumed, changes = resume_settings(recorded, args, set(given), run_dir)
            train_stage(recorded["stage"], resumed, dist, run_dir, recorded, changes)
            if recorded["stage"] == "stage1" and recorded["args"].get("stage") == "all":
                resumed.run_dir = str(run_dir.parent / "stage2") if resumed.run_dir else None
                train_stage("stage2", resumed, dist)
            return 0
        base = args.run_dir
        for stage_name in stages:
            if base and len(stages) > 1:
                args.run_dir = str(Path(base) / stage_name)
            train_stage(stage_name, args, dist)
        return 0
    except TrainingInterrupted as error:
        sys.exit(_interrupted(error))
    finally:
        shutdown_distributed(dist)


def stage_parser(stage_name: str, prog: str) -> argparse.ArgumentParser:
    titles = {"stage1": "Stage 1 (FERD): train the spectral FEN by reverse distillation and export "
                        "convh.pt, enc.pt, pc.pt to <checkpoint_dir>/<C>bands/.",
              "stage2": "Stage 2 (FERS): train the rebellious student (spatial branch) on the frozen stage-1 FEN "
                        "and export spa_fen.pt to <checkpoint_dir>/<C>bands/."}
    parser = argparse.ArgumentParser(prog=prog, description=titles[stage_name])
    add_training_arguments(parser, (stage_name,))
    return parser


def _stage_main(stage: str, prog: str, argv):
    """One stage's command line: ``stage`` is ``"1"`` or ``"2"``."""
    parser = stage_parser(STAGES[stage], prog)
    args = parser.parse_args(argv)
    _check(parser, args)
    args.stage = stage
    return _run([STAGES[stage]], args, given_flags(stage_parser(STAGES[stage], prog), argv))


@cli_entry
def stage1_main(argv=None):
    return _stage_main("1", "train_FERD/train.py", argv)


@cli_entry
def stage2_main(argv=None):
    return _stage_main("2", "train_FERS/train.py", argv)


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train FERS: --stage 1 (FERD, the spectral FEN), 2 (the spatial branch on a "
                                     "trained stage 1; the default, as step 2 of the reference README) or all.")
    add_training_arguments(parser, ("stage1", "stage2"), main=True)
    return parser


@cli_entry
def main(argv=None):
    parser = main_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    stages = ["stage1", "stage2"] if args.stage == "all" else [STAGES[args.stage]]
    return _run(stages, args, given_flags(main_parser(), argv))
