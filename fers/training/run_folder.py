"""The run folder of a training, and what makes a run continuable: RNG states, signals, state files.

Each run owns a folder::

    runs/<stage>_<C>bands_<time>/
        config.json   all arguments, seed, versions, data manifest, selection rule
        log.jsonl     one line per completed epoch: loss terms, seconds, held-out loss, test AUC, and
                      whether the epoch looks diverging (:func:`divergence`)
        state.pt      the weights that training changes, optimiser, epoch, RNG states, data order and
                      the selected weights, written atomically after every epoch (``--resume <run_dir>``
                      continues from it)
        frozen.pt     the weights that never change (frozen teacher / FEN / ResNet-34 and their eval-mode
                      BatchNorm buffers), written once; state.pt records its SHA-256
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import FersError, ParameterError
from ..io import sha256_file
from ..outputs import atomic_torch_save, ensure_writable_dir, write_errors, write_json
from ..training_data import TrainingData
from ..utils import REPO_ROOT, versions
from .config import TrainConfig
from .stages import cpu_state

if TYPE_CHECKING:
    from .distributed import Distributed
    from .loop import TrainingOptions

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
FROZEN_FILE = "frozen.pt"


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the last completed epoch's state is on disk."""

    def __init__(self, signum: int, run_dir: Path, epochs_done: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.run_dir = run_dir
        self.epochs_done = epochs_done


def default_run_dir(stage: str, channels: int) -> Path:
    base = REPO_ROOT / "runs" / f"{stage}_{channels}bands_{datetime.now():%Y%m%d-%H%M%S}"
    path, index = base, 1
    while path.exists():
        index += 1
        path = base.with_name(f"{base.name}-{index}")
    return path


def prepare_run_dir(run_dir, fresh: bool = True) -> Path:
    """Create the run folder (checking it is writable); a fresh run refuses a folder that holds one."""
    run_dir = Path(run_dir)
    if fresh and (run_dir / STATE_FILE).exists():
        raise FersError(f"{run_dir}: already holds a training run; continue it with `resume` {run_dir} "
                        "or choose another `run_dir`")
    return ensure_writable_dir(run_dir, "`run_dir`")


def read_run_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FersError(f"{path}: not found; `resume` takes a run folder written by train.py")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FersError(f"{path}: unreadable run configuration ({error}); start a new run") from None


def rng_states(order: torch.Generator) -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
              "data_order": order.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, order: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = copy.deepcopy(states["numpy"])
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    order.set_state(states["data_order"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_run_state(run_dir) -> dict | None:
    """The state of the last completed epoch, or None if the run never completed one."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # atomic writes make this unlikely; say what to do
        raise FersError(f"{path}: unreadable training state ({str(error).splitlines()[0].split('. ')[0][:120]}); "
                        "start a new run") from None


def save_frozen(run_dir, stage) -> str:
    """Write ``frozen.pt`` (the state entries training never changes) once; returns its SHA-256."""
    path = Path(run_dir) / FROZEN_FILE
    frozen = stage.frozen_keys()
    payload = {name: cpu_state(module, set(module.state_dict()) - frozen.get(name, set()))
               for name, module in stage.modules().items()}
    with write_errors(run_dir, "`run_dir`"):
        atomic_torch_save(path, payload)
    return sha256_file(path)


def load_frozen(run_dir, sha256: str) -> dict:
    """``frozen.pt`` of a run, checked against the SHA-256 recorded in its ``state.pt``."""
    path = Path(run_dir) / FROZEN_FILE
    if not path.is_file():
        raise FersError(f"{path}: missing; it holds the run's frozen weights (written when the run began) "
                        "and state.pt needs it; restore it or start a new run")
    if sha256_file(path) != sha256:
        raise FersError(f"{path}: does not belong to this run's state.pt (SHA-256 differs from the recorded "
                        "one); restore the run's own frozen.pt or start a new run")
    return torch.load(path, map_location="cpu", weights_only=True)


class SignalStopper:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the state on disk is always that
    of a completed epoch and no write is cut in half."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handler(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def run_config(stage, args: dict, data: TrainingData, options: TrainingOptions, dist: Distributed) -> dict:
    """The content of ``config.json``."""
    return {
        "stage": stage.name,
        "args": args,
        "seed": options.seed,
        "selection": options.selection,
        "selection_uses_test_labels": options.selection == "test_auc",
        "data_order": options.data_order,
        "protocol": options.protocol,
        "optimizer": {"name": "Adam", "lr": options.lr, "betas": list(options.betas)},
        "loss_weights": stage.weights,
        "network": stage.describe(),
        "world_size": dist.world_size,
        "device": str(dist.device),
        "cwd": os.getcwd(),  # relative paths of older runs were relative to it (paths are absolute now)
        "data": {"source": data.source, "crops": len(data), "crop_shape": list(data.crops.shape[1:]),
                 "constant_crops_skipped": data.skipped_constant, "manifest": data.manifest},
        "versions": versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def write_run_config(run_dir, config: dict) -> None:
    with write_errors(run_dir, "`run_dir`"):
        write_json(Path(run_dir) / CONFIG_FILE, config)


# --------------------------------------------------------------------------- resuming a run

# Paths recorded in config.json; stored absolute so that a run resumes from any folder.
PATH_FIELDS = ("data_path", "checkpoint_dir", "run_dir", "backbone_weights", "wavelengths")
# With resume: settings that never change the trained weights (taken from the resuming call) ...
RESUME_FREE = ("device", "workers", "no_progress")
# ... and settings that are checked, then honoured (recorded in config.json under "resumes").
RESUME_HONOURED = ("data_path", "checkpoint_dir", "epochs")
# Settings recorded as None when not given, resolved by the protocol (fers.reference.resolve_protocol).
PROTOCOL_RESOLVED = ("seed", "bce_input", "spatial_bn", "selection", "data_order", "test_sensor")


def absolute(path) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(str(path)))


def recorded_cwd(recorded: dict, run_dir: Path) -> str:
    """The working folder the run was started from: recorded since config.json has ``cwd``; for older
    runs, inferred from a relative ``run_dir`` (``<cwd>/<run_dir>`` is the run folder), else this one."""
    if recorded.get("cwd"):
        return recorded["cwd"]
    old = recorded["args"].get("run_dir")
    if old and not os.path.isabs(old):
        parts = Path(os.path.normpath(old)).parts
        if ".." not in parts and run_dir.parts[-len(parts):] == parts:
            return str(Path(*run_dir.parts[:-len(parts)]))
    return os.getcwd()


def resume_settings(recorded: dict, config: TrainConfig, given: set, run_dir: Path):
    """The settings of a resumed run: the recorded ones (relative paths of older runs resolved against
    the run's working folder) with ``config``'s :data:`RESUME_FREE` settings, and the checked
    :data:`RESUME_HONOURED` ones that were ``given``. Returns ``(TrainConfig, {name: (old, new)})``; any
    other given setting whose value differs from the recorded one is refused with one line."""
    args = dict(recorded["args"])
    cwd = recorded_cwd(recorded, run_dir)
    for name in PATH_FIELDS:
        value = args.get(name)
        if value is not None and not os.path.isabs(os.path.expanduser(value)):
            args[name] = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))
    changes = {}
    for name in sorted(set(given) - {"resume", *RESUME_FREE}):
        new = absolute(getattr(config, name)) if name in PATH_FIELDS else getattr(config, name)
        if isinstance(new, tuple):
            new = list(new)  # as JSON recorded it
        missing = name not in args
        old = args.get(name)
        if old is None and name in PROTOCOL_RESOLVED:  # not given then: compare with what the protocol chose
            old = (recorded.get("protocol") or {}).get(name, recorded.get(name))
            if new == old:
                continue
        if name == "run_dir":
            if new not in (old, str(run_dir)):
                raise ParameterError(f"`run_dir` {new}: `resume` continues the run in its own folder {run_dir}; "
                                     "drop `run_dir` (or drop `resume` to start a new run there)")
        elif name in RESUME_HONOURED:
            if new != old:
                changes[name] = (old, new)
                args[name] = new
        elif missing or new != old:
            shown = "not recorded (the run predates the flag)" if missing else f"recorded {old}"
            raise ParameterError(f"`{name}` {new}: would change the run in {run_dir} ({shown}); drop `{name}` "
                                 "to continue it, or start a new run with another `run_dir`")
    for name in RESUME_FREE:
        args[name] = getattr(config, name)
    args["resume"] = str(run_dir)
    resumed = TrainConfig.from_dict(args)
    if "data_path" not in changes and not Path(resumed.data_path).is_dir():
        raise ParameterError(f"{resumed.data_path}: the training data folder of the run in {run_dir} is not there; "
                             "pass `data_path` with the folder that now holds the same files")
    return resumed, changes


def manifest_difference(recorded: list, current: list) -> str:
    """What differs between two data manifests (missing, added, changed files)."""
    old = {m["file"]: m["sha256"] for m in recorded}
    new = {m["file"]: m["sha256"] for m in current}
    parts = []
    for label, names in (("missing", sorted(set(old) - set(new))), ("not in the run", sorted(set(new) - set(old))),
                         ("content changed", sorted(n for n in set(old) & set(new) if old[n] != new[n]))):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts) or "shapes differ"
