"""Small shared helpers: devices, seeds, versions, repository paths.

No torch at import: the command lines parse their arguments and start reading scenes while torch
loads (:mod:`fers.cli.evaluate`); the helpers that need it import it when called."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from .errors import FersError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    """``auto`` → the first CUDA device if there is one, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FersError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FersError(f"--device {name}: unknown device; use auto, cpu or cuda") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Versions recorded with every run and result."""
    import torch

    from . import __version__

    return {"fers": __version__, "git": git_revision(), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads()}


def device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def default_threads() -> None:
    """Use every core the process may run on (PyTorch sometimes sees the host's count in containers)."""
    from .tuning import usable_cpus

    available = len(usable_cpus())
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, available))


def in_background(function, name: str) -> None:
    """Run ``function`` on a daemon thread, e.g. an import an output writer will need: imports and
    other work that hold the interpreter overlap with the networks, which release it. Its errors are
    ignored here (the caller meets them again when it does the work itself)."""
    import threading

    def run():
        try:
            function()
        except Exception:  # the work is redone, and fails loudly, where it is needed
            pass

    threading.Thread(target=run, name=name, daemon=True).start()


def preload(*modules: str) -> None:
    """Import ``modules`` in the background (:func:`in_background`)."""
    import importlib

    in_background(lambda: [importlib.import_module(module) for module in modules], f"fers-preload-{modules[0]}")
