"""ABU ``.mat`` files → the FERS_ABU layout (``test/<sensor>/*.npy`` + ``ground_truth/<sensor>/*.png``),
written all or nothing. Layouts: docs/data.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import FersError
from .io import load_cube, load_mask, save_mask_png
from .outputs import staged_layout

CUBE_SUFFIX = ".npy"
MASK_SUFFIX = ".png"


def prepare_abu(abu_dir, output, sensor: str = "aviris", overwrite: bool = False) -> list[dict]:
    """Convert every ABU ``.mat`` in ``abu_dir`` to ``output/test/<sensor>/<scene>.npy`` (the ``data``
    cube, dtype and values kept) and ``output/ground_truth/<sensor>/<scene>.png`` (grey, anomalies
    255). All or nothing. Returns one record per scene (name, shape, dtype, anomaly pixels)."""
    abu_dir = Path(abu_dir)
    if not abu_dir.is_dir():
        raise FersError(f"{abu_dir}: ABU folder not found; pass `abu_dir` (a folder of ABU .mat files)")
    mats = sorted(abu_dir.glob("*.mat"))
    if not mats:
        raise FersError(f"{abu_dir}: no .mat files; pass `abu_dir` the folder holding abu-*.mat")
    records = []
    parts = [Path("test") / sensor, Path("ground_truth") / sensor]
    with staged_layout(output, parts, overwrite) as staging:
        for path in mats:
            cube = load_cube(path)
            mask = load_mask(path)
            if mask.shape != cube.shape[:2]:
                raise FersError(f"{path}: ground truth 'map' is {mask.shape[0]}×{mask.shape[1]} but the cube is "
                                f"{cube.shape[0]}×{cube.shape[1]}; fix or remove this file")
            np.save(staging / parts[0] / f"{path.stem}{CUBE_SUFFIX}", cube)
            save_mask_png(staging / parts[1] / f"{path.stem}{MASK_SUFFIX}", mask)
            records.append({"name": path.stem, "shape": list(cube.shape), "dtype": str(cube.dtype),
                            "anomaly_pixels": int(mask.sum())})
    return records
