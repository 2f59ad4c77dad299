"""The public API of ``import fers``: the README's Python example runs as written, and each name
does what the commands do."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

import fers
from conftest import ABU_DIR, REPO_ROOT


def _readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _scene(path):
    """A real ABU scene when the shared data is there, else a small synthetic one; saved as .mat."""
    if (ABU_DIR / "abu-beach-3.mat").is_file():
        contents = scipy.io.loadmat(ABU_DIR / "abu-beach-3.mat")
        cube, mask = contents["data"], contents["map"]
    else:
        rng = np.random.default_rng(3)
        cube = rng.dirichlet(np.ones(3), (80, 90)) @ rng.uniform(0.1, 1.0, (3, 210))
        cube += 0.01 * rng.standard_normal((80, 90, 210))
        mask = np.zeros((80, 90), np.uint8)
        mask[40:43, 50:53] = 1
        cube[mask == 1] += 0.5
    scipy.io.savemat(path, {"data": cube, "map": mask})
    return cube, mask != 0


def numpy_rx(cube: np.ndarray) -> np.ndarray:
    """Plain global RX: sample covariance (n − 1) and its pseudo-inverse, pixel by pixel."""
    pixels = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    centred = pixels - pixels.mean(0)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    return np.einsum("pi,ij,pj->p", centred, inverse, centred).reshape(cube.shape[:-1])


def test_readme_python_example_runs(tmp_path, random_checkpoints, monkeypatch):
    cube, mask = _scene(tmp_path / "scene.mat")
    assert random_checkpoints == tmp_path / "checkpoints"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    assert namespace["rx_map"].shape == cube.shape[:2] and namespace["scores"].shape == cube.shape[:2]
    np.testing.assert_array_equal(namespace["mask"], mask)
    expected = numpy_rx(cube)
    np.testing.assert_allclose(namespace["rx_map"], expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert np.isfinite(namespace["scores"]).all()


def test_rx_scores_takes_a_cube_or_pixels_and_a_local_background():
    rng = np.random.default_rng(8)
    cube = rng.standard_normal((20, 24, 6)) @ rng.standard_normal((6, 6)) + 3.0
    expected = numpy_rx(cube)
    np.testing.assert_allclose(fers.rx_scores(cube), expected, rtol=1e-9, atol=1e-9 * expected.max())
    pixels = cube.reshape(-1, 6)
    np.testing.assert_allclose(fers.rx_scores(pixels), expected.ravel(), rtol=1e-9, atol=1e-9 * expected.max())
    from fers.detectors import local_rx_scores

    local = local_rx_scores(torch.from_numpy(np.moveaxis(cube, 2, 0).copy()), 3, 9, components=None).numpy()
    np.testing.assert_allclose(fers.rx_scores(cube, background="local", inner=3, outer=9), local, rtol=1e-12)
    with pytest.raises(ValueError, match="background"):
        fers.rx_scores(cube, background="tile")
    with pytest.raises(ValueError, match="cube"):
        fers.rx_scores(np.zeros(5))


def test_detector_detect_equals_the_commands_map(tmp_path, random_checkpoints):
    # a scene no larger than one tile: detect() gives FERS_ABU/test.py's map (score of the whole scene)
    cube, _ = _scene(tmp_path / "scene.mat")
    detector = fers.Detector.from_checkpoints(random_checkpoints, channels=200, branches="both")
    prepared, _ = fers.prepare_cube(cube, 200)
    batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared, 2, 0)))[None]
    expected = detector.score(batch)[0].numpy()
    np.testing.assert_array_equal(detector.detect(cube, tile=max(cube.shape[:2])), expected)
    tiled = detector.detect(cube)  # 64×64 tiles, blended
    assert tiled.shape == cube.shape[:2] and np.isfinite(tiled).all()


def test_help_lists_the_api():
    env = dict(os.environ, PAGER="cat", PYTHONPATH=str(REPO_ROOT))
    text = subprocess.run([sys.executable, "-c", "import fers; help(fers)"], capture_output=True, text=True,
                          env=env, timeout=120).stdout
    for name in ("Detector", "rx_scores", "load_cube", "load_mask", "metrics", "train", "TrainConfig",
                 "prepare_cube"):
        assert name in text, name
    assert set(fers.__all__) >= {"Detector", "rx_scores", "train", "TrainConfig", "load_cube", "load_mask"}
