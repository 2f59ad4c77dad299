"""Shared fixtures. Real scenes come from ``../shared/data`` (CI has it); tests that need them
skip with a stated reason when it is absent (a user's clone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests use the tuning rules, never a calibration cached for the machine (python -m fers.tuning --calibrate)
os.environ.setdefault("FERS_TUNING_CACHE", "off")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FERS_SHARED_DIR", REPO_ROOT.parent / "shared"))
ABU_DIR = SHARED / "data" / "abu"
BACKGROUND_DIR = SHARED / "data" / "background"
REFERENCE_DIR = SHARED / "reference"

needs_abu = pytest.mark.skipif(not ABU_DIR.is_dir(), reason=f"real ABU scenes not found at {ABU_DIR} "
                               "(set FERS_SHARED_DIR to the folder holding data/ and reference/)")
needs_background = pytest.mark.skipif(not BACKGROUND_DIR.is_dir(),
                                      reason=f"real background scenes not found at {BACKGROUND_DIR}")
needs_reference = pytest.mark.skipif(not REFERENCE_DIR.is_dir(),
                                     reason=f"reference facts not found at {REFERENCE_DIR}")


# The ABU reference values are published with 6 decimals; scores that agree with the independent
# float64 RX to rounding can differ beyond that only in how (near-)tied scores fall, which
# fers.metrics.tie_sensitivity bounds per measure. Tolerance = published rounding + that bound.
PUBLISHED_ROUNDING = 5e-7


def assert_matches_published(actual: float, expected: float, scores, mask, measure: str = "auc", what: str = ""):
    """``actual`` (a measure of ``scores`` against ``mask``) equals the published ``expected`` to the
    published digits plus the measure's own tie noise on this map."""
    from fers.metrics import tie_sensitivity

    bound = tie_sensitivity(scores, mask)[measure]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=PUBLISHED_ROUNDING + bound + 1e-9,
                               err_msg=what or measure)


def call_main(module: str, function: str, argv: list, capsys) -> tuple[int, str, str]:
    """Run a command's ``main(argv)`` in this process: ``(exit code, stdout, stderr)``."""
    import importlib

    main = getattr(importlib.import_module(module), function)
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv]) or 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def run_detect(argv, capsys) -> tuple[int, str, str]:
    """``detect.py`` in this process on the CPU, without a progress bar: ``(exit code, stdout, stderr)``."""
    return call_main("fers.cli.detect", "main", [*argv, "--no_progress", "--device", "cpu"], capsys)


def error_line(code, err) -> str:
    """The one ``error:`` line of a refused command (exit code 2, no traceback)."""
    assert code == 2 and "Traceback" not in err, (code, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def run_script(script, *args, cwd=None, timeout=600):
    """Run a repository script with this interpreter; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, args)], cwd=cwd or REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def had100_layout(tmp_path):
    """A tiny HAD100-layout test set: 3 scenes of 64×64×60 with square anomalies."""
    from fers.io import save_mask_png

    rng = np.random.default_rng(1)
    root = tmp_path / "HAD100Dataset"
    endmembers = rng.uniform(0.1, 1.0, size=(3, 60))
    for index in range(3):
        abundances = rng.dirichlet(np.ones(3), size=(64, 64))
        cube = abundances @ endmembers + 0.01 * rng.standard_normal((64, 64, 60))
        mask = np.zeros((64, 64), bool)
        mask[20 + index:23 + index, 30:33] = True
        cube[mask] = rng.uniform(0.1, 1.0, 60)
        (root / "test" / "aviris_ng").mkdir(parents=True, exist_ok=True)
        np.save(root / "test" / "aviris_ng" / f"scene{index}.npy", cube.astype(np.float32))
        save_mask_png(root / "ground_truth" / "aviris_ng" / f"scene{index}.png", mask)
    return root


@pytest.fixture
def random_checkpoints(tmp_path):
    """Random-init FEN and spatial-branch checkpoints for 50 and 200 bands in the reference layout."""
    from fers.checkpoints import band_folder, save_fen, save_spatial_branch
    from fers.fen import FEN
    from fers.spatial_branch import SpatialBranch

    root = tmp_path / "checkpoints"
    for channels in (50, 200):
        save_fen(band_folder(root, channels), FEN(channels))
        save_spatial_branch(band_folder(root, channels), SpatialBranch(channels))
    return root


@pytest.fixture(scope="module")
def ferd50(tmp_path_factory):
    """FERD checkpoints for 50 bands with a small (ResNet-18) FEN: the evaluation commands need a branch."""
    from fers.checkpoints import band_folder, save_fen
    from fers.fen import FEN

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ferd50")
    save_fen(band_folder(root, 50), FEN(50, "resnet18"))
    return root
