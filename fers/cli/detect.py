"""``detect.py SCENE``: a trained detector on one scene of any size, tiled, with an optional
ground truth for the metrics."""

from __future__ import annotations

import argparse
import csv
import io as _io
import time
import warnings
from pathlib import Path

from .. import detectors
from ..errors import FersError, cli_entry
from ..evaluation import Detector
from ..io import CUBE_SUFFIXES, OutputFolder, ensure_writable_dir, load_cube, load_mask, save_mat, save_npy, \
    write_json, write_text
from ..metrics import detection_metrics
from ..scene_detection import BACKGROUNDS, TileGrid, detect_scene, prepare_scene
from ..utils import REPO_ROOT, default_threads, resolve_device, versions
from .common import add_model_arguments, check_positive

ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".IMG", ".DAT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detect.py", conflict_handler="resolve",
        description="Run FERS (or FERD, or plain RX) on one hyperspectral scene of any size, in "
                    "overlapping tiles. Writes <scene>_scores.npy/.mat/.png into --save_dir, and the "
                    "metrics (results.json, results.csv) when a ground truth is given or found.")
    parser.add_argument("scene", help="cube file: .mat (v5 or v7.3), .npy, .npz or ENVI .hdr (needs 'spectral')")
    add_model_arguments(parser, default_channels=200)
    parser.add_argument("--branches", choices=detectors.BRANCHES + ("none",), default="both",
                        help="both = FERS; spectral = FERD only; spatial = spatial only; none = plain RX "
                             "(no checkpoint needed)")
    parser.add_argument("--batch_size", type=int, default=16, help="tiles per forward pass")
    parser.add_argument("--cube_key", default=None, help="variable holding the cube in a .mat/.npz "
                        "(default: 'data' or the only 3-D array)")
    parser.add_argument("--gt", default=None, help="ground-truth mask (.png, .mat, .npy; non-zero = anomaly); "
                        "default: the 'map' (or only 2-D array) inside a .mat scene, if any")
    parser.add_argument("--tile", type=int, default=64, help="tile size in pixels (>= the scene size: one tile, "
                        "the same map as FERS_ABU/test.py)")
    parser.add_argument("--overlap", type=int, default=16, help="minimum overlap of neighbouring tiles, blended")
    parser.add_argument("--background", choices=BACKGROUNDS, default="tile",
                        help="tile = RX statistics per tile, tile maps robustly standardised, then blended; "
                             "global = features per tile, blended, then one RX over the whole scene")
    parser.add_argument("--adaptive", action="store_true", help="also the adaptive 3D-ROC measures")
    parser.add_argument("--save_dir", default=str(REPO_ROOT / "results" / "detect"))
    return parser


def _check_scene_path(path: Path) -> None:
    if not path.exists():
        raise FersError(f"{path}: no such scene file")
    suffix = path.suffix.lower()
    if suffix not in CUBE_SUFFIXES:
        raise FersError(f"{path}: unknown file type '{path.suffix}'; use one of {', '.join(CUBE_SUFFIXES)}")
    if suffix == ".hdr" and not any(path.with_suffix(ext).is_file() for ext in ENVI_DATA_SUFFIXES):
        raise FersError(f"{path}: ENVI header without its data file (looked for "
                        f"{path.stem}{{{','.join(e or '<none>' for e in ENVI_DATA_SUFFIXES[:7])}}}); "
                        "put the data file beside the header")


def _ground_truth(args, path: Path):
    """The mask from ``--gt``, or the 2-D map stored in a .mat scene; ``(mask or None, source)``."""
    if args.gt:
        return load_mask(args.gt), str(args.gt)
    if path.suffix.lower() == ".mat":
        try:
            return load_mask(path), f"{path} (map inside the scene file)"
        except FersError:
            return None, None
    return None, None


def _csv(row: dict) -> str:
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    return buffer.getvalue()


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, input_channel=args.input_channel, batch_size=args.batch_size, tile=args.tile)
    if not 0 <= args.overlap < args.tile:
        parser.error("--overlap must be at least 0 and smaller than --tile")
    path = Path(args.scene)
    _check_scene_path(path)
    default_threads()
    ensure_writable_dir(args.save_dir)
    device = resolve_device(args.device)
    detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel, args.branches, device=device,
                                         fusion=args.fusion, rx_precision=args.rx_precision)
    mask, gt_source = _ground_truth(args, path)  # before the cube: a .mat is read whole each time
    cube = load_cube(path, key=args.cube_key, mmap=path.suffix.lower() == ".npy")
    if mask is not None and mask.shape != cube.shape[:2]:
        raise FersError(f"{args.gt or path}: ground truth is {mask.shape[0]}×{mask.shape[1]} but the scene "
                        f"{path.name} is {cube.shape[0]}×{cube.shape[1]}; they must match")
    name = path.stem
    started = time.perf_counter()
    prepared, bands = prepare_scene(cube, args.input_channel, args.band_policy, str(path))
    del cube
    grid = TileGrid(prepared.shape[0], prepared.shape[1], args.tile, args.overlap)
    print(f"{name}: {prepared.shape[0]}×{prepared.shape[1]}, {bands}; {len(grid)} tile(s) of "
          f"{grid.tile_rows}×{grid.tile_cols}, {args.background} RX background; branches={detector.branches}, "
          f"fusion={detector.fusion}, rx_precision={detector.rx_precision}, device={device}")
    scores = detect_scene(detector, prepared, args.tile, args.overlap, args.background, args.batch_size,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - started
    del prepared
    row = {"name": name, "seconds": seconds, "bands": bands, "height": scores.shape[0], "width": scores.shape[1],
           "tiles": len(grid)}
    if mask is not None:
        if not mask.any():
            print(f"warning: {gt_source}: the ground truth has no anomaly pixel; metrics are NaN")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row.update(detection_metrics(scores, mask, adaptive=args.adaptive))
    config = {**vars(args), **detector.describe(), "device": str(device), "ground_truth": gt_source,
              "tile_rows": grid.tile_rows, "tile_cols": grid.tile_cols}
    from ..report import save_heatmap

    with OutputFolder(args.save_dir) as out:
        save_npy(out / f"{name}_scores.npy", scores)
        save_mat(out / f"{name}_scores.mat", {"scores": scores})
        save_heatmap(out / f"{name}_scores.png", scores,
                     f"{name}: {detector.branches} branches, {args.background} RX"
                     + (f", AUC {row['auc']:.4f}" if "auc" in row else ""))
        write_json(out / "results.json", {"scenes": [row], "config": config, "versions": versions()})
        if mask is not None:
            write_text(out / "results.csv", _csv(row))
    if mask is not None:
        print(f"{name}: AUC {row['auc']:.4f}, AUC(D,tau) {row['auc_dtau']:.4f}, AUC(F,tau) {row['auc_ftau']:.4f}, "
              f"SNPR {row['snpr_db']:.2f} dB, F1 {row['f1']:.4f} ({gt_source})")
    else:
        print(f"{name}: no ground truth (pass --gt MASK for the metrics)")
    print(f"{seconds:.2f} s; results written to {args.save_dir}")
    return 0
