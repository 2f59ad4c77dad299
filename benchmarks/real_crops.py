"""99 real 64×64×200 scenes in the HAD100 test layout, cut from the shared ABU scenes.

HAD100 itself is not on the project's machines. Its test set is 100 AVIRIS-NG crops of 64×64 with
anomalies; the closest real data here are the ABU scenes (AVIRIS, 100×100, anomalies marked in
``map``). The crops are built the same way every time:

- scenes: the ABU files with at least 200 bands (airport-1/2/3, urban-1/2/4/5; the others have
  102–193 bands and would need interpolation, which HAD100's 200-band scenes never do);
- bands: the first 200 of the stored cube (the reference's "first N bands"), as float32;
- crops: 64×64 windows at row/column offsets 0, 9, 18, 27, 36 (25 per scene), kept when the
  window holds at least one anomaly pixel (every HAD100 test scene has anomalies), taken
  round-robin over the scenes (first window of each scene, then the second, ...) until 99;
- files: ``<root>/test/aviris_ng/<scene>-r<row>-c<col>.npy`` and the ground truth as a grey PNG
  (anomalies 255) under ``<root>/ground_truth/aviris_ng/``, which ``test.py --data_path <root>``
  reads as it reads HAD100.

    python benchmarks/real_crops.py OUTPUT_ROOT [--count 99]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# the shared ABU folder: $FERS_SHARED_DIR/data/abu, else ../shared/data/abu beside the repository
ABU_DIR = Path(os.environ.get("FERS_SHARED_DIR", REPO_ROOT.parent / "shared")) / "data" / "abu"
SENSOR = "aviris_ng"
CROP = 64
BANDS = 200
OFFSETS = (0, 9, 18, 27, 36)


@functools.lru_cache(maxsize=None)
def _read_scene(path: Path):
    """A shared ABU scene, read once for the plan and the crops (13 scenes of a few MB)."""
    from fers.io import read_scene

    return read_scene(path)


def crop_plan(abu_dir: Path, count: int = 99) -> list[tuple[Path, int, int]]:
    """``(scene file, row, col)`` of each crop, in the order described in the module docstring."""
    per_scene = []
    for path in sorted(Path(abu_dir).glob("*.mat")):
        scene = _read_scene(path)
        if scene.cube.shape[2] < BANDS or scene.mask is None:
            continue
        windows = [(path, row, col) for row in OFFSETS for col in OFFSETS
                   if row + CROP <= scene.cube.shape[0] and col + CROP <= scene.cube.shape[1]
                   and scene.mask[row:row + CROP, col:col + CROP].any()]
        per_scene.append(windows)
    plan = []
    for position in range(max((len(w) for w in per_scene), default=0)):
        plan += [windows[position] for windows in per_scene if position < len(windows)]
    if len(plan) < count:
        raise SystemExit(f"{abu_dir}: only {len(plan)} crops with anomalies; need {count}")
    return plan[:count]


def write_crops(root, count: int = 99, abu_dir: Path | None = None) -> Path:
    """Write ``count`` crops into ``root`` in the HAD100 test layout (see the module docstring);
    returns ``root``. Existing files are overwritten."""
    from fers.io import save_mask_png

    root = Path(root)
    cubes, gts = root / "test" / SENSOR, root / "ground_truth" / SENSOR
    cubes.mkdir(parents=True, exist_ok=True)
    gts.mkdir(parents=True, exist_ok=True)
    for path, row, col in crop_plan(abu_dir or ABU_DIR, count):
        scene = _read_scene(path)
        name = f"{path.stem}-r{row:02d}-c{col:02d}"
        window = (slice(row, row + CROP), slice(col, col + CROP))
        np.save(cubes / f"{name}.npy", np.ascontiguousarray(scene.cube[window][:, :, :BANDS], dtype=np.float32))
        save_mask_png(gts / f"{name}.png", scene.mask[window])
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder (the --data_path of test.py)")
    parser.add_argument("--count", type=int, default=99)
    args = parser.parse_args(argv)
    root = write_crops(args.root, args.count)
    print(f"wrote {args.count} crops of {CROP}×{CROP}×{BANDS} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
