"""Dataset layouts as sorted manifests of scenes (scene id, cube path, ground-truth path).

- HAD100: ``<root>/test/<sensor>/<name>.npy`` with ``<root>/ground_truth/<sensor>/<name>.png``.
- ABU: a folder of ``.mat`` files (``data`` and ``map``), a single such file, or the reference
  FERS_ABU layout ``<root>/test/<sensor>/<name>.npy`` with ``<root>/ground_truth/<sensor>/<name>.png``.

The PNGs of the paired layouts are read with the HAD100 rule (channel 1 >= 128); a scene file
without a ground truth of its size is unlabelled (detection without metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FersError
from .io import EMBEDDED, LAYOUT_CHECK, read_scene

HAD100_SENSOR = "aviris_ng"


@dataclass(frozen=True)
class Scene:
    """One test scene. ``gt_path`` is None when the ground truth lives in the cube file (ABU .mat),
    if it has one. ``mask_rule`` reads an image ground truth (``had100`` for the paired layouts),
    ``layout`` the cube file (see :data:`fers.io.CUBE_LAYOUTS`)."""

    name: str
    cube_path: Path
    gt_path: Path | None = None
    sensor: str = ""
    mask_rule: str = "nonzero"
    layout: str = LAYOUT_CHECK


def _require_folder(path: Path, what: str, flag: str = "`data_path`") -> Path:
    if not path.is_dir():
        raise FersError(f"{path}: {what} folder not found; check {flag}")
    return path


def paired_manifest(root, sensor: str | None, cube_suffix: str = ".npy", layout: str = LAYOUT_CHECK) -> list[Scene]:
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
            scenes.append(Scene(cube_path.stem, cube_path, gt_path, name, "had100", layout))
    if not scenes:
        raise FersError(f"{root}: no test scenes (*{cube_suffix} under test/{sensor or '<sensor>'}/); check `data_path`")
    return scenes


def had100_manifest(root, sensor: str = HAD100_SENSOR, layout: str = LAYOUT_CHECK) -> list[Scene]:
    """The HAD100 test set (100 scenes of 64×64 for the official data)."""
    root = Path(root)
    if root.is_file():
        raise FersError(f"{root}: a single file, not the HAD100 root; test.py evaluates the HAD100 test set "
                        "(pass the folder holding test/ as `data_path`); for one scene run detect.py "
                        f"{root.name} --gt MASK, or FERS_ABU/test.py --data_path {root.name} for a .mat with its map")
    if not root.is_dir():
        raise FersError(f"{root}: HAD100 folder not found; download HAD100 (see README, 'Data') "
                        "or pass `data_path`")
    return paired_manifest(root, sensor, layout=layout)


SCENE_FILE_SUFFIXES = (".mat", ".npz", ".npy")


def abu_manifest(root, sensor: str | None = None, layout: str = LAYOUT_CHECK) -> list[Scene]:
    """ABU scenes: a folder of ``.mat`` files, one scene file (``.mat``/``.npz`` with its ground truth
    inside, or any ``.npy``/``.mat``/``.npz`` cube, unlabelled), or the FERS_ABU layout."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() not in SCENE_FILE_SUFFIXES:
            raise FersError(f"{root}: unknown scene file type '{root.suffix}'; `data_path` takes a folder or "
                            f"one scene file ({', '.join(SCENE_FILE_SUFFIXES)})")
        return [Scene(root.stem, root, None, "file", layout=layout)]
    if not root.is_dir():
        raise FersError(f"{root}: ABU folder not found; pass `data_path` (a folder of .mat scenes, one "
                        ".mat scene file, or the FERS_ABU layout made by data/prepare_abu.py)")
    mats = sorted(root.glob("*.mat"))
    if mats:
        return [Scene(path.stem, path, None, "mat", layout=layout) for path in mats]
    if (root / "test").is_dir():
        return paired_manifest(root, sensor, layout=layout)
    raise FersError(f"{root}: no scenes (no *.mat files and no test/<sensor>/*.npy); check `data_path`")


def load_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray | None]:
    """``(cube (H, W, B), mask (H, W) bool or None)``; None: an unlabelled scene file (no 2-D array
    of its size inside). A ground truth of another size is an error."""
    loaded = read_scene(scene.cube_path, scene.gt_path if scene.gt_path is not None else EMBEDDED,
                        layout=scene.layout, mask_rule=scene.mask_rule)
    cube, mask = loaded.cube, loaded.mask
    if mask is not None and mask.shape != cube.shape[:2]:
        source = scene.gt_path or scene.cube_path
        raise FersError(f"{source}: ground truth is {mask.shape[0]}×{mask.shape[1]} but the cube "
                        f"{scene.cube_path.name} is {cube.shape[0]}×{cube.shape[1]}; they must match")
    return cube, mask
