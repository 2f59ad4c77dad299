"""Peak memory and time of ``detect.py`` on a large synthetic scene (default 1000×1000×200 float32,
800 MB on disk), per RX background mode.

    python benchmarks/large_scene.py                     # 1000×1000×200, random-init checkpoints
    python benchmarks/large_scene.py --size 256 --output /tmp/large.json

Each run is a fresh ``detect.py`` process; its peak resident set size is the kernel's
``ru_maxrss`` of that process (see :data:`LAUNCHER`), so it includes the interpreter, PyTorch, the
memory-mapped scene pages it touched, and everything detection allocated. The scene is written
in row chunks through a memory map, so making it needs little memory either.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402


def make_scene(path: Path, size: int, bands: int, seed: int = 0, chunk_rows: int = 50) -> np.ndarray:
    """Write a ``size × size × bands`` float32 ``.npy`` scene: three endmembers mixed by smooth
    abundance fields, 1 % noise, and 3×3 anomalies (30 % of a foreign spectrum); returns the mask."""
    rng = np.random.default_rng(seed)
    endmembers = rng.uniform(0.1, 1.0, size=(3, bands))
    foreign = rng.uniform(0.1, 1.0, size=bands)
    frequencies = rng.uniform(1.0, 4.0, size=(3, 2))
    phases = rng.uniform(0, 2 * np.pi, size=3)
    mask = np.zeros((size, size), dtype=bool)
    for row, col in rng.integers(2, size - 5, size=(max(4, size // 40), 2)):
        mask[row:row + 3, col:col + 3] = True
    cube = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, size, bands))
    cols = np.linspace(0, 1, size)
    for start in range(0, size, chunk_rows):
        rows = np.linspace(0, 1, size)[start:start + chunk_rows]
        y, x = np.meshgrid(rows, cols, indexing="ij")
        logits = np.stack([np.sin(2 * np.pi * (f[0] * y + f[1] * x) + p) for f, p in zip(frequencies, phases)], -1)
        abundances = np.exp(2 * logits) / np.exp(2 * logits).sum(-1, keepdims=True)
        chunk = abundances @ endmembers + 0.01 * rng.standard_normal((len(rows), size, bands))
        chunk_mask = mask[start:start + chunk_rows]
        chunk[chunk_mask] = 0.7 * chunk[chunk_mask] + 0.3 * foreign
        cube[start:start + chunk_rows] = chunk
    cube.flush()
    del cube
    return mask


def write_random_checkpoints(root: Path, bands: int) -> None:
    from fers.checkpoints import band_folder, save_fen, save_spatial_branch
    from fers.fen import FEN
    from fers.spatial_branch import SpatialBranch
    import torch

    torch.manual_seed(0)
    save_fen(band_folder(root, bands), FEN(bands))
    save_spatial_branch(band_folder(root, bands), SpatialBranch(bands))


# A small launcher between us and the measured command. Linux starts a child's ``ru_maxrss`` at
# its parent's peak (fork copies it, exec keeps the maximum), so measuring detect.py directly
# from this process would report our own peak (the memory-mapped scene we just wrote, PyTorch)
# instead. The launcher is a bare ``python -S`` (about 10 MiB), which bounds that overcount.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"@@peak_rss_kib {usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str]) -> dict:
    """Run ``command`` to completion; exit code, wall seconds, peak RSS in MiB (``ru_maxrss`` of
    that process, through :data:`LAUNCHER`) and its combined output."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], capture_output=True, text=True)
    peak = [line for line in result.stderr.splitlines() if line.startswith("@@peak_rss_kib ")]
    output = result.stdout + "\n".join(line for line in result.stderr.splitlines() if line not in peak)
    return {"returncode": result.returncode, "seconds": time.perf_counter() - started,
            "peak_rss_mib": int(peak[-1].split()[1]) / 1024.0 if peak else float("nan"), "output": output}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1000, help="scene height and width")
    parser.add_argument("--bands", type=int, default=200)
    parser.add_argument("--backgrounds", default="tile,global")
    parser.add_argument("--branches", default="both")
    parser.add_argument("--checkpoint_dir", default=None, help="default: random-init checkpoints in the work folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--work_dir", default=None, help="where the scene is written (default: a temporary folder)")
    parser.add_argument("--limit_gib", type=float, default=4.0, help="exit 1 when a run's peak RSS exceeds this")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "large_scene.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        scene = work / f"synthetic_{args.size}x{args.size}x{args.bands}.npy"
        tick = time.perf_counter()
        mask = make_scene(scene, args.size, args.bands)
        np.save(work / "mask.npy", mask)
        print(f"scene {scene.name}: {scene.stat().st_size / 2 ** 20:.0f} MiB, written in "
              f"{time.perf_counter() - tick:.1f} s")
        checkpoints = args.checkpoint_dir
        if checkpoints is None and args.branches != "none":
            checkpoints = work / "checkpoints"
            write_random_checkpoints(checkpoints, args.bands)
        rows = []
        for background in args.backgrounds.split(","):
            command = [sys.executable, str(REPO_ROOT / "detect.py"), str(scene), "--gt", str(work / "mask.npy"),
                       "--input_channel", str(args.bands), "--branches", args.branches, "--background", background,
                       "--tile", str(args.tile), "--overlap", str(args.overlap), "--device", args.device,
                       "--save_dir", str(work / f"out_{background}"), "--no_progress"]
            if checkpoints is not None:
                command += ["--checkpoint_dir", str(checkpoints)]
            result = run_measured(command)
            if result["returncode"] != 0:
                print(result["output"])
                raise SystemExit(f"detect.py failed with exit code {result['returncode']}")
            scene_row = json.loads((work / f"out_{background}" / "results.json").read_text())["scenes"][0]
            rows.append({"background": background, "size": args.size, "bands": args.bands, "branches": args.branches,
                         "tiles": scene_row["tiles"], "auc": scene_row["auc"], "detect_seconds": scene_row["seconds"],
                         "wall_seconds": result["seconds"], "peak_rss_mib": result["peak_rss_mib"],
                         "scene_mib": scene.stat().st_size / 2 ** 20})
            print(f"{background:>6} RX: {scene_row['tiles']} tiles, AUC {scene_row['auc']:.4f}, "
                  f"{result['seconds']:.1f} s wall, peak RSS {result['peak_rss_mib']:.0f} MiB")
    from fers.io import write_json
    from fers.utils import versions

    write_json(args.output, {"rows": rows, "limit_gib": args.limit_gib, "cores": len(os.sched_getaffinity(0)),
                             "versions": versions()})
    print(f"wrote {args.output}")
    over = [row for row in rows if row["peak_rss_mib"] > args.limit_gib * 1024]
    if over:
        print(f"peak RSS above {args.limit_gib} GiB: {', '.join(row['background'] for row in over)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
