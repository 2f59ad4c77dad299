"""Peak memory of ``detect.py`` on a flight line far larger than memory should need: an ENVI (BIL,
float32) scene of ≥ 8 GiB read window by window, against the same command on a
1000×1000×200 scene read whole into memory (``.npz``).

    python benchmarks/flight_line.py                                  # 3100×3100×224 ENVI, 8.0 GiB
    python benchmarks/flight_line.py --size 600 --memory_size 300     # a quick check of the script
    python benchmarks/flight_line.py --branches none,both --backgrounds global,tile

The flight line is the real AVIRIS scene ``aviris-lacumbre-90x90x224.mat`` (from
``$FERS_SHARED_DIR/data/background``) tiled with alternate mirror flips, 1 % noise, 3×3 implanted
anomalies, and a no-data border of -9999 around a rotated swath (its header declares it with
``data ignore value``, and map info), so the run also masks no-data (``--nodata auto``), writes a
georeferenced GeoTIFF and an ENVI map. The scene is written in row blocks into a temporary folder
(``--work_dir``, default the system's) and deleted at the end. Peak resident set: the
``ru_maxrss`` of each ``detect.py`` process (``large_scene.run_measured``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from large_scene import make_scene, run_measured, write_random_checkpoints  # noqa: E402

SHARED = Path(os.environ.get("FERS_SHARED_DIR", REPO_ROOT.parent / "shared"))
SOURCE = SHARED / "data" / "background" / "aviris-lacumbre-90x90x224.mat"
MAP_INFO = "{UTM, 1.000, 1.000, 600000.000, 3800000.000, 5.0000, 5.0000, 11, North, WGS-84, units=Meters}"
NODATA = -9999.0


def make_flight_line(header: Path, size: int, seed: int = 0, block_rows: int = 16) -> np.ndarray:
    """Write ``size × size × 224`` float32 BIL ENVI (``header`` and ``.img``); returns the anomaly mask."""
    import scipy.io

    source = scipy.io.loadmat(SOURCE)
    scene = source["data"].astype(np.float32)
    wavelengths = source["wavelengths"].ravel()
    tile, bands = scene.shape[0], scene.shape[2]
    tiles = {(flip_rows, flip_cols): scene[::(-1) ** flip_rows, ::(-1) ** flip_cols]
             for flip_rows in (0, 1) for flip_cols in (0, 1)}
    rng = np.random.default_rng(seed)
    noise = 0.01 * scene.reshape(-1, bands).std(0)
    foreign = scene.reshape(-1, bands).mean(0) * (1.0 + 0.5 * np.sin(np.arange(bands) / 7.0))
    mask = np.zeros((size, size), bool)
    for row, col in rng.integers(size // 5, 4 * size // 5, size=(max(4, size // 30), 2)):
        mask[row:row + 3, col:col + 3] = True
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, centre = np.radians(20.0), size / 2.0  # a swath turned by 20°, 70 % of the scene wide
    along = (cols - centre) * np.cos(angle) + (rows - centre) * np.sin(angle)
    swath = np.abs(along) < 0.35 * size
    del rows, cols, along
    mask &= swath
    data = header.with_suffix(".img")
    image = np.memmap(data, dtype="<f4", mode="w+", shape=(size, bands, size))  # BIL: rows, bands, cols
    for start in range(0, size, block_rows):
        stop = min(size, start + block_rows)
        block = np.empty((stop - start, size, bands), np.float32)
        for row in range(start, stop):
            for col0 in range(0, size, tile):
                piece = tiles[((row // tile) % 2, (col0 // tile) % 2)][row % tile, :min(tile, size - col0)]
                block[row - start, col0:col0 + len(piece)] = piece
        block += (noise * rng.standard_normal(block.shape)).astype(np.float32)
        hits = mask[start:stop]
        block[hits] = 0.6 * block[hits] + 0.4 * foreign
        block[~swath[start:stop]] = NODATA
        image[start:stop] = block.transpose(0, 2, 1)
    image.flush()
    del image
    header.write_text("\n".join([
        "ENVI", "description = {FERS benchmark flight line}", f"samples = {size}", f"lines = {size}",
        f"bands = {bands}", "header offset = 0", "file type = ENVI Standard", "data type = 4", "interleave = bil",
        "byte order = 0", f"data ignore value = {NODATA:g}", f"map info = {MAP_INFO}",
        "wavelength units = Nanometers", "wavelength = {" + ", ".join(f"{w:g}" for w in wavelengths) + "}"]) + "\n")
    return mask


def detect_command(scene: Path, gt: Path, out: Path, branches: str, background: str, checkpoints, args) -> list:
    command = [sys.executable, str(REPO_ROOT / "detect.py"), str(scene), "--gt", str(gt), "--input_channel", "200",
               "--band_policy", "first", "--branches", branches, "--background", background, "--tile", str(args.tile),
               "--overlap", str(args.overlap), "--device", args.device, "--nodata", "auto", "--save_dir", str(out),
               "--no_progress"]
    return command + (["--checkpoint_dir", str(checkpoints)] if branches != "none" else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3100, help="flight line rows and columns (3100: 8.0 GiB)")
    parser.add_argument("--memory_size", type=int, default=1000, help="rows and columns of the in-memory scene")
    parser.add_argument("--branches", default="none", help="comma-separated: none, both, spectral")
    parser.add_argument("--backgrounds", default="global", help="comma-separated: global, tile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--work_dir", default=None, help="where the scenes are written (default: the system's temp)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "flight_line.json"))
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work = Path(work)
        tick = time.perf_counter()
        line = work / f"flight_line_{args.size}x{args.size}x224.hdr"
        np.save(work / "line_gt.npy", make_flight_line(line, args.size))
        line_bytes = line.with_suffix(".img").stat().st_size
        print(f"{line.name}: {line_bytes / 2 ** 30:.2f} GiB on disk, written in {time.perf_counter() - tick:.0f} s")
        memory_scene = work / f"in_memory_{args.memory_size}x{args.memory_size}x200.npz"
        memory_mask = make_scene(work / "memory.npy", args.memory_size, 200)
        np.savez(memory_scene, data=np.load(work / "memory.npy", mmap_mode="r"))
        (work / "memory.npy").unlink()
        np.save(work / "memory_gt.npy", memory_mask)
        checkpoints = work / "checkpoints"
        if any(b != "none" for b in args.branches.split(",")):
            write_random_checkpoints(checkpoints, 200)
        for branches in args.branches.split(","):
            for background in args.backgrounds.split(","):
                for kind, scene, gt, size_bytes in (
                        ("in memory (.npz)", memory_scene, work / "memory_gt.npy", memory_scene.stat().st_size),
                        ("from disk (ENVI)", line, work / "line_gt.npy", line_bytes)):
                    out = work / f"out_{branches}_{background}_{scene.stem}"
                    result = run_measured(detect_command(scene, gt, out, branches, background, checkpoints, args))
                    if result["returncode"] != 0:
                        print(result["output"])
                        raise SystemExit(f"detect.py failed with exit code {result['returncode']}")
                    row_file = json.loads((out / "results.json").read_text())["scenes"][0]
                    rows.append({"scene": kind, "branches": branches, "background": background,
                                 "shape": [row_file["height"], row_file["width"]], "scene_gib": size_bytes / 2 ** 30,
                                 "nodata_pixels": row_file["nodata_pixels"], "tiles": row_file["tiles"],
                                 "auc": row_file["auc"], "detect_seconds": row_file["seconds"],
                                 "wall_seconds": result["seconds"], "peak_rss_mib": result["peak_rss_mib"],
                                 "maps": sorted(path.name for path in out.iterdir() if "_scores." in path.name)})
                    height, width = rows[-1]["shape"]
                    print(f"{kind:>17}: {height}×{width}, {size_bytes / 2 ** 30:.2f} GiB, "
                          f"{branches}/{background} RX: AUC {row_file['auc']:.4f}, {result['seconds']:.0f} s wall, "
                          f"peak RSS {result['peak_rss_mib']:.0f} MiB")
    from common import machine
    from fers.outputs import write_json

    write_json(args.output, {"rows": rows, **machine(args.device)})
    print(f"wrote {args.output}")
    pairs = {}
    for row in rows:
        pairs.setdefault((row["branches"], row["background"]), {})[row["scene"]] = row["peak_rss_mib"]
    bounded = all(pair["from disk (ENVI)"] < pair["in memory (.npz)"] for pair in pairs.values())
    print("the flight line from disk stays under the in-memory scene's peak" if bounded else
          "the flight line from disk exceeds the in-memory scene's peak")
    return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
