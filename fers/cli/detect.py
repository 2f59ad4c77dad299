"""``detect.py SCENE``: a trained detector on one scene of any size, tiled, with an optional
ground truth for the metrics. Several runs into one ``--save_dir`` accumulate: each scene has its
``<scene>_results.json``, and ``results.json``/``results.csv`` summarise every scene there."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import detectors
from ..errors import FersError, cli_entry
from ..evaluation import Detector
from ..io import CUBE_SUFFIXES, EMBEDDED, read_scene
from ..outputs import OutputFolder, check_writable_dir, save_mat, save_npy, write_json
from ..profiling import phase
from ..results import measure, scene_row
from ..scene_detection import BACKGROUNDS, TileGrid, detect_scene, prepare_scene, write_scene_results
from ..utils import REPO_ROOT, default_threads, resolve_device, versions
from .common import add_layout_argument, add_model_arguments, check_positive, cube_layout

ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".IMG", ".DAT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detect.py", conflict_handler="resolve",
        description="Run FERS (or FERD, or plain RX) on one hyperspectral scene of any size, in "
                    "overlapping tiles. Writes <scene>_scores.npy/.mat/.png and <scene>_results.json into "
                    "--save_dir, and results.json/results.csv: one row per scene detected into that folder "
                    "(metrics when a ground truth is given or found) and the mean.")
    parser.add_argument("scene", help="cube file: .mat (v5 or v7.3), .npy, .npz or ENVI .hdr (needs 'spectral')")
    add_model_arguments(parser, default_channels=200)
    parser.add_argument("--branches", choices=detectors.BRANCHES + ("none",), default="both",
                        help="both = FERS; spectral = FERD only; spatial = spatial only; none = plain RX "
                             "(no checkpoint needed)")
    parser.add_argument("--batch_size", type=int, default=16, help="tiles per forward pass")
    parser.add_argument("--cube_key", default=None, help="variable holding the cube in a .mat/.npz "
                        "(default: 'data' or the only 3-D array)")
    parser.add_argument("--gt", default=None,
                        help="ground-truth mask (.png/.tif/.bmp: non-zero in any colour channel = anomaly, alpha "
                             "ignored; .mat, .npz, .npy: non-zero = anomaly), or 'none' for no ground truth; "
                             "default: the 2-D array of the scene's size inside a .mat/.npz scene ('map', or the "
                             "only one), if any")
    parser.add_argument("--gt_key", default=None,
                        help="variable holding the ground truth in a .mat/.npz (the --gt file, or the scene file)")
    add_layout_argument(parser)
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


def _ground_truth_arg(args):
    """``--gt``: a file, None for ``--gt none``, or EMBEDDED (look inside the scene file)."""
    if args.gt is None:
        return EMBEDDED
    if args.gt.lower() == "none":
        return None
    return args.gt


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
    check_writable_dir(args.save_dir)
    device = resolve_device(args.device)
    detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel, args.branches, device=device,
                                         fusion=args.fusion, rx_precision=args.rx_precision)
    gt = _ground_truth_arg(args)
    with phase("read_validate"):
        scene = read_scene(path, gt, cube_key=args.cube_key, gt_key=args.gt_key, layout=cube_layout(args),
                           mmap=path.suffix.lower() == ".npy")
    cube, mask, gt_source, layout_used = scene.cube, scene.mask, scene.gt_source, scene.layout
    if mask is not None and mask.shape != cube.shape[:2]:
        raise FersError(f"{args.gt or path}: ground truth is {mask.shape[0]}×{mask.shape[1]} but the scene "
                        f"{path.name} is {cube.shape[0]}×{cube.shape[1]}; they must match")
    name = path.stem
    started = time.perf_counter()
    prepared, bands = prepare_scene(cube, args.input_channel, args.band_policy, str(path))
    del cube, scene
    grid = TileGrid(prepared.shape[0], prepared.shape[1], args.tile, args.overlap)
    print(f"{name}: {prepared.shape[0]}×{prepared.shape[1]}, {bands}"
          + (", stored bands-first (transposed)" if layout_used == "bhw" else "")
          + f"; {len(grid)} tile(s) of "
          f"{grid.tile_rows}×{grid.tile_cols}, {args.background} RX background; branches={detector.branches}, "
          f"fusion={detector.fusion}, rx_precision={detector.rx_precision}, device={device}")
    from ..report import preload_in_background, save_heatmap

    detector.warm_up()
    preload_in_background()  # matplotlib and scipy.io load while the networks run
    scores = detect_scene(detector, prepared, args.tile, args.overlap, args.background, args.batch_size,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - started
    del prepared
    if mask is not None and not mask.any():
        print(f"warning: {gt_source}: the ground truth has no anomaly pixel; metrics are NaN")
    row = scene_row(name, measure(scores, mask, args.adaptive) if mask is not None else None, seconds=seconds,
                    bands=bands, height=scores.shape[0], width=scores.shape[1], tiles=len(grid),
                    labelled=mask is not None)
    config = {**vars(args), **detector.describe(), "device": str(device), "ground_truth": gt_source,
              "cube_layout_used": layout_used, "tile_rows": grid.tile_rows, "tile_cols": grid.tile_cols}
    with phase("write_outputs"), OutputFolder(args.save_dir) as out:
        save_npy(out / f"{name}_scores.npy", scores)
        save_mat(out / f"{name}_scores.mat", {"scores": scores})
        save_heatmap(out / f"{name}_scores.png", scores,
                     f"{name}: {detector.branches} branches, {args.background} RX"
                     + (f", AUC {row['auc']:.4f}" if "auc" in row else ""))
        write_json(out / f"{name}_results.json", {"scene": row, "config": config, "versions": versions()})
        summary = write_scene_results(out, args.save_dir)
    if mask is not None:
        print(f"{name}: AUC {row['auc']:.4f}, AUC(D,tau) {row['auc_dtau']:.4f}, AUC(F,tau) {row['auc_ftau']:.4f}, "
              f"SNPR {row['snpr_db']:.2f} dB, F1 {row['f1']:.4f} ({gt_source})")
    elif gt is None:
        print(f"{name}: --gt none: detection only, no metrics")
    else:
        print(f"{name}: no ground truth (no 2-D array of the scene's size in the file; pass --gt MASK for the "
              "metrics): detection only")
    if len(summary["scenes"]) > 1:
        mean, covered = summary["mean_auc"], summary["scenes_covered"]
        print(f"{args.save_dir}: {len(summary['scenes'])} scenes in results.json; mean AUC {mean:.4f} over "
              f"{covered} of {len(summary['scenes'])}")
    print(f"{seconds:.2f} s; results written to {args.save_dir}")
    return 0
