"""Dataset layouts as sorted manifests of scenes (scene id, cube path, ground-truth path).

- HAD100: ``<root>/test/<sensor>/<name>.npy`` with ``<root>/ground_truth/<sensor>/<name>.png``.
- ABU: a folder of ``.mat`` files (``data`` and ``map``), or the reference FERS_ABU layout
  ``<root>/test/<sensor>/<name>.npy`` with ``<root>/ground_truth/<sensor>/<name>.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FersError
from .io import load_cube, load_mask

HAD100_SENSOR = "aviris_ng"


@dataclass(frozen=True)
class Scene:
    """One test scene. ``gt_path`` is None when the ground truth lives in the cube file (ABU .mat)."""

    name: str
    cube_path: Path
    gt_path: Path | None = None
    sensor: str = ""


def _require_folder(path: Path, what: str, flag: str = "--data_path") -> Path:
    if not path.is_dir():
        raise FersError(f"{path}: {what} folder not found; check {flag}")
    return path


def paired_manifest(root, sensor: str | None, cube_suffix: str = ".npy") -> list[Scene]:
    """Scenes of the ``test/<sensor>/*.npy`` + ``ground_truth/<sensor>/<name>.png`` layout;
    ``sensor=None`` takes every sensor folder under ``test/``."""
    root = Path(root)
    test_root = _require_folder(root / "test", "test")
    sensors = [sensor] if sensor else sorted(p.name for p in test_root.iterdir() if p.is_dir())
    scenes = []
    for name in sensors:
        cubes = sorted(_require_folder(test_root / name, "test sensor").glob(f"*{cube_suffix}"))
        for cube_path in cubes:
            gt_path = root / "ground_truth" / name / f"{cube_path.stem}.png"
            if not gt_path.is_file():
                raise FersError(f"{cube_path}: no ground truth at {gt_path}; add it or remove the cube")
            scenes.append(Scene(cube_path.stem, cube_path, gt_path, name))
    if not scenes:
        raise FersError(f"{root}: no test scenes (*{cube_suffix} under test/{sensor or '<sensor>'}/); check --data_path")
    return scenes


def had100_manifest(root, sensor: str = HAD100_SENSOR) -> list[Scene]:
    """The HAD100 test set (100 scenes of 64×64 for the official data)."""
    root = Path(root)
    if not root.is_dir():
        raise FersError(f"{root}: HAD100 folder not found; download HAD100 (see README, 'Data') "
                        "or pass --data_path")
    return paired_manifest(root, sensor)


def abu_manifest(root, sensor: str | None = None) -> list[Scene]:
    """ABU scenes: a folder of ``.mat`` files, or the FERS_ABU ``test/``+``ground_truth/`` layout."""
    root = Path(root)
    if not root.is_dir():
        raise FersError(f"{root}: ABU folder not found; pass --data_path (a folder of .mat scenes "
                        "or the FERS_ABU layout made by data/prepare_abu.py)")
    mats = sorted(root.glob("*.mat"))
    if mats:
        return [Scene(path.stem, path, None, "mat") for path in mats]
    if (root / "test").is_dir():
        return paired_manifest(root, sensor)
    raise FersError(f"{root}: no scenes (no *.mat files and no test/<sensor>/*.npy); check --data_path")


def load_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """``(cube (H, W, B), mask (H, W) bool)``; a ground truth of another size is an error."""
    cube = load_cube(scene.cube_path)
    mask = load_mask(scene.gt_path) if scene.gt_path is not None else load_mask(scene.cube_path)
    if mask.shape != cube.shape[:2]:
        source = scene.gt_path or scene.cube_path
        raise FersError(f"{source}: ground truth is {mask.shape[0]}×{mask.shape[1]} but the cube "
                        f"{scene.cube_path.name} is {cube.shape[0]}×{cube.shape[1]}; they must match")
    return cube, mask
