"""Training crops for both stages.

Two sources:

- the HAD100 layout, ``<data_path>/train/<sensor>/*.npy`` (the reference's training data);
- any folder of ``.mat``/``.npy``/``.npz`` scenes of any size.

Every scene gives crops of ``img_size × img_size`` (``tile``: non-overlapping tiles from the
top-left corner; ``random``: crops at positions drawn from the seed), keeps its first C bands
and each crop is normalised on its own with the reference scaling
(:func:`fers.preprocessing.normalize_cube`). The result is deterministic given the seed, and a
sorted manifest (file name, SHA-256, shape) records exactly what was trained on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FersError, ParameterError
from .io import load_cube, sha256_file
from .preprocessing import normalize_cube, to_chw, validate_cube

CROP_MODES = ("tile", "random")
SCENE_SUFFIXES = (".mat", ".npy", ".npz")
HAD100_TRAIN_SENSORS = ("aviris_ng", "aviris")


@dataclass
class TrainingData:
    """Crops ``(N, C, S, S)`` float32, where each came from, and the data manifest."""

    crops: np.ndarray
    origins: list = field(default_factory=list)  # (file name, row, col) per crop
    manifest: list = field(default_factory=list)  # [{"file", "sha256", "shape"}], sorted by file
    source: str = ""
    skipped_constant: int = 0
    sensor: str | None = None  # the HAD100 sensor folder; None for a folder of scenes

    def __len__(self) -> int:
        return len(self.crops)


def training_files(data_path, sensor: str = "aviris_ng") -> tuple[list[Path], str, str | None]:
    """Sorted scene files, a description of the layout and the sensor folder read (None: a plain
    folder of scenes).

    ``<data_path>/train/<sensor>/*.npy`` when ``data_path`` has a ``train/`` folder (HAD100),
    otherwise the ``.mat``/``.npy``/``.npz`` files directly in ``data_path``.
    """
    root = Path(data_path)
    if not root.is_dir():
        raise FersError(f"{root}: training data folder not found; download HAD100 (see README, 'Data') "
                        "or pass `data_path` (the HAD100 root or a folder of .mat/.npy scenes)")
    train = root / "train"
    if train.is_dir():
        folder = train / sensor
        if not folder.is_dir():
            found = ", ".join(sorted(p.name for p in train.iterdir() if p.is_dir())) or "none"
            raise FersError(f"{folder}: no such sensor folder (found: {found}); choose `sensor`")
        files = sorted(folder.glob("*.npy"))
        if not files:
            raise FersError(f"{folder}: no training scenes (*.npy); check `data_path` and `sensor`")
        return files, f"HAD100 train/{sensor}", sensor
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SCENE_SUFFIXES)
    if not files:
        raise FersError(f"{root}: no training scenes (no train/<sensor>/*.npy and no "
                        f"{'/'.join(SCENE_SUFFIXES)} files); check `data_path`")
    return files, f"scene folder {root}", None


def crop_positions(height: int, width: int, size: int, mode: str, count: int | None,
                   rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of the crops of one scene.

    ``tile``: every non-overlapping ``size × size`` tile from the top-left corner (``count`` ignored).
    ``random``: ``count`` corners drawn uniformly (default: as many as there are tiles).
    """
    rows, cols = height // size, width // size
    if mode == "tile":
        return [(r * size, c * size) for r in range(rows) for c in range(cols)]
    if mode == "random":
        count = count or rows * cols
        tops = rng.integers(0, height - size + 1, size=count)
        lefts = rng.integers(0, width - size + 1, size=count)
        return [(int(t), int(left)) for t, left in zip(tops, lefts)]
    raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")


def _read_scene(path: Path, channels: int, size: int) -> tuple[np.ndarray, str, list]:
    cube = load_cube(path)
    height, width, bands = cube.shape
    if bands < channels:
        raise FersError(f"{path}: has {bands} bands, fewer than `input_channel` {channels}; "
                        "remove it from the training folder or train a model for fewer bands")
    if height < size or width < size:
        raise FersError(f"{path}: scene is {height}×{width}, smaller than the {size}×{size} crop; "
                        "remove it or use a smaller `img_size`")
    cube = np.asarray(cube[:, :, :channels])
    validate_cube(cube, str(path))
    return cube, sha256_file(path), [height, width, bands]


def load_training_data(data_path, channels: int, img_size: int = 64, sensor: str = "aviris_ng",
                       crop: str = "tile", crops_per_scene: int | None = None, seed: int = 0,
                       workers: int = 1) -> TrainingData:
    """Read every scene, check it, and cut the normalised crops ``(N, C, S, S)``."""
    if img_size < 8 or img_size % 8:
        raise ParameterError(f"`img_size` {img_size}: must be a positive multiple of 8 (the decoder halves it 3 times)")
    if crop not in CROP_MODES:
        raise ParameterError(f"`crop` {crop}: choose one of {', '.join(CROP_MODES)}")
    files, source, sensor_folder = training_files(data_path, sensor)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        scenes = list(pool.map(lambda p: _read_scene(p, channels, img_size), files))
    rng = np.random.default_rng(seed)
    crops, origins, manifest, skipped = [], [], [], 0
    for path, (cube, digest, shape) in zip(files, scenes):
        manifest.append({"file": path.name, "sha256": digest, "shape": shape})
        for top, left in crop_positions(cube.shape[0], cube.shape[1], img_size, crop, crops_per_scene, rng):
            patch = cube[top:top + img_size, left:left + img_size]
            if not np.max(patch) > np.min(patch):
                skipped += 1  # a constant crop holds nothing to learn and cannot be normalised
                continue
            crops.append(to_chw(normalize_cube(patch)))
            origins.append((path.name, top, left))
    if not crops:
        raise FersError(f"{data_path}: every {img_size}×{img_size} crop is constant; nothing to train on")
    return TrainingData(np.stack(crops), origins, manifest, source, skipped, sensor_folder)


def split_held_out(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, held_out)``: a seeded random ``fraction`` of the crops (at least one, and at
    least one left for training) is held out for label-free model selection."""
    if count < 2:
        raise FersError(f"only {count} training crop(s): too few to hold some out for `selection` val_loss; "
                        "use `selection` last or more data")
    held = min(count - 1, max(1, int(round(fraction * count))))
    order = np.random.default_rng(seed + 1).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])
