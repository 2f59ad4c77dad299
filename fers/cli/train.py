"""Training command lines: ``train_FERD/train.py`` (stage 1), ``train_FERS/train.py`` (stage 2) and
the top-level ``train.py --stage 1|2|all``. Flag names follow the reference release."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import ParameterError, cli_entry
from ..training import TrainConfig, TrainingInterrupted, train
from ..training.config import STAGES
from ..training.api import protocol_settings  # noqa: F401 (the settings of parsed flags, for tests and tools)
from ..utils import REPO_ROOT, default_threads
from .common import as_flags, console_logging, flags_in_errors, given_flags


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
    """What :meth:`TrainConfig.validate` refuses, as a usage error naming the flag."""
    try:
        TrainConfig.from_dict(vars(args)).validate()
    except ParameterError as error:
        parser.error(as_flags(str(error)))


def _interrupted(error: TrainingInterrupted) -> int:
    saved = (f"{error.run_dir}/state.pt holds the last completed epoch ({error.epochs_done})" if error.epochs_done
             else "no epoch had completed yet (resuming starts the run again)")
    print(f"\ninterrupted by signal {error.signum}; {saved}. Resume with:\n"
          f"  python {REPO_ROOT / 'train.py'} --resume {error.run_dir}", file=sys.stderr)
    return 128 + error.signum


def _run(args, given: set = frozenset()) -> int:
    """Train as ``args`` say (``given``: the flags typed on the command line, see :func:`given_flags`);
    library errors name parameters, shown here as flags."""
    default_threads()
    console_logging()
    try:
        with flags_in_errors():
            train(TrainConfig.from_dict(vars(args)), given=set(given))
        return 0
    except TrainingInterrupted as error:
        sys.exit(_interrupted(error))


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
    return _run(args, given_flags(stage_parser(STAGES[stage], prog), argv))


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
    return _run(args, given_flags(main_parser(), argv))
