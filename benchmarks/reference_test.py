"""The reference-style ``test.py`` as a whole process: what ``benchmarks/end_to_end.py`` compares the
real ``test.py`` with, on the same files and checkpoints.

It runs the way the reference release's HAD100 test script runs: the networks as written (no
inference copies), one scene at a time with autograd left on, each scene read when it is reached,
the per-pixel NumPy RX loop above 50 bands and the float32 ``torch.linalg.pinv`` RX product rule at
50 bands (``benchmarks/detection.py``'s ``reference_detect``), the AUC per scene, then the scores and
AUCs written at the end. Same reading and scaling as fers (so the scores agree to float32 rounding
of the features); no code of the reference release is used.

    python benchmarks/reference_test.py --input_channel 200 --data_path DIR --checkpoint_dir DIR --save_dir DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS.parent), str(BENCHMARKS)]

from detection import reference_detect  # noqa: E402
from fers.checkpoints import band_folder, load_fen, load_spatial_branch  # noqa: E402
from fers.io import load_mask  # noqa: E402
from fers.metrics import auc  # noqa: E402
from fers.preprocessing import normalize_cube  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_channel", type=int, default=200)
    parser.add_argument("--data_path", required=True, help="HAD100 layout: test/<sensor>/*.npy, ground_truth/<sensor>/*.png")
    parser.add_argument("--sensor", default="aviris_ng")
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--save_dir", required=True)
    args = parser.parse_args(argv)
    channels = args.input_channel
    folder = band_folder(args.checkpoint_dir, channels)
    fen, spatial = load_fen(folder, channels), load_spatial_branch(folder, channels)
    test_dir = Path(args.data_path) / "test" / args.sensor
    names = sorted(name[:-4] for name in os.listdir(test_dir) if name.endswith(".npy"))
    scores, gts, aucs = [], [], []
    started = time.perf_counter()
    for name in names:
        cube = np.load(test_dir / f"{name}.npy")[:, :, :channels]
        gt = load_mask(Path(args.data_path) / "ground_truth" / args.sensor / f"{name}.png", rule="had100")
        score = reference_detect(fen, spatial, normalize_cube(cube))
        scores.append(score)
        gts.append(gt)
        aucs.append(auc(score, gt))
        print(f"{name}: AUC {aucs[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - started
    import scipy.io

    save_dir = Path(args.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(save_dir / "scores.mat", {"scores": np.stack(scores), "gts": np.stack(gts).astype(np.uint8)})
    (save_dir / "each_auc.txt").write_text("".join(f"{name}:{value}\n" for name, value in zip(names, aucs)))
    print(f"mean AUC {np.mean(aucs):.4f} over {len(aucs)} scenes; {seconds:.2f} s of detection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
