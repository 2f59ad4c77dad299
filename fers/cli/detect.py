"""``detect.py SCENE``: a trained detector on one scene of any size, tiled, with an optional
ground truth for the metrics. Several runs into one ``--save_dir`` accumulate: each scene has its
``<scene>_results.json``, and ``results.json``/``results.csv`` summarise every scene there."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import choices
from ..errors import FersError, cli_entry
from ..evaluation import Detector
from ..bands import BAND_POLICIES
from ..io import CUBE_SUFFIXES, EMBEDDED, load_wavelengths, read_scene
from ..outputs import OutputFolder, check_writable_dir, save_mat, save_npy, write_json
from ..profiling import phase
from ..results import measure, scene_row
from ..map_outputs import write_scene_maps
from ..preprocessing import nodata_rule
from ..scene_detection import BACKGROUNDS, TileGrid, detect_scene, write_scene_results
from ..utils import REPO_ROOT, default_threads, resolve_device, versions
from .common import add_layout_argument, add_model_arguments, check_positive, cube_layout, resolve_model_arguments

ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".IMG", ".DAT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detect.py", conflict_handler="resolve",
        description="Run FERS (or FERD, or plain RX) on one hyperspectral scene of any size, in "
                    "overlapping tiles. Writes <scene>_scores.npy/.mat/.png and <scene>_results.json into "
                    "--save_dir, and results.json/results.csv: one row per scene detected into that folder "
                    "(metrics when a ground truth is given or found) and the mean. GeoTIFF inputs, and ENVI "
                    "inputs with map info, also get <scene>_scores.tif in their georeferencing; ENVI inputs "
                    "<scene>_scores.hdr.")
    parser.add_argument("scene", help="cube file: .mat (v5 or v7.3), .npy, .npz, ENVI .hdr (needs 'spectral') or "
                        "GeoTIFF .tif (needs 'rasterio'); .npy, ENVI and GeoTIFF are read tile by tile")
    add_model_arguments(parser, default_channels=200, band_policies=BAND_POLICIES)
    parser.add_argument("--wavelengths", default=None, metavar="FILE",
                        help="the scene's band centres (nm, or µm below 100: .txt/.csv numbers, .json list, ENVI "
                             ".hdr, .npy, .mat/.npz 'wavelengths') when its file carries none; default: the ENVI "
                             "header's 'wavelength', a 'wavelengths'/'wavelength' vector in a .mat/.npz")
    parser.add_argument("--model_wavelengths", default=None, metavar="FILE",
                        help="the C band centres the model was trained on (same formats), for --band_policy "
                             "wavelength when its checkpoints record none (released checkpoints)")
    parser.add_argument("--branches", choices=choices.BRANCHES + ("none",), default=None,
                        help="both = FERS; spectral = FERD only; spatial = spatial only; none = plain RX "
                             "(no checkpoint needed); default: both, or spectral for a ferd-* --weights")
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
    parser.add_argument("--background", choices=BACKGROUNDS, default=None,
                        help="tile = RX statistics per tile, tile maps robustly standardised, then blended; "
                             "global = features per tile, blended, then one RX over the whole scene. Default: "
                             "global for --branches none (plain RX = global RX, as spectral.rx), tile otherwise")
    parser.add_argument("--nodata", default="none", metavar="auto|VALUE|none",
                        help="none (default) = refuse NaN/Inf and fill values, as test.py does; auto = mask NaN/Inf, "
                             "the file's declared value (ENVI 'data ignore value', GeoTIFF nodata), -9999, -32768, "
                             "1e-34, -1e34, -3.4e38 in any band and pixels that are 0 in every band; VALUE = mask "
                             "NaN/Inf and that value. Masked pixels are left out of every statistic and are no-data "
                             "(NaN) in the maps")
    parser.add_argument("--far", type=float, default=None, metavar="RATE",
                        help="also write <scene>_mask.png (and _mask.tif with a GeoTIFF map): the pixels above the "
                             "scene's (1 - RATE) score quantile, i.e. a false-alarm rate of about RATE (e.g. 0.001)")
    parser.add_argument("--geojson", action="store_true",
                        help="with --far: <scene>_detections.geojson, one point per connected detection (area in "
                             "pixels and map units, peak score, centroid in map coordinates)")
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


def _scene_wavelengths(args, path: Path):
    """The scene's band centres (nm): ``--wavelengths``, else those its file carries; a file whose own
    vector cannot be read stops only ``--band_policy wavelength``."""
    if args.wavelengths:
        return load_wavelengths(args.wavelengths)
    try:
        return load_wavelengths(path)
    except FersError:
        if args.band_policy == "wavelength":
            raise
        return None


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, input_channel=args.input_channel, batch_size=args.batch_size, tile=args.tile)
    if not 0 <= args.overlap < args.tile:
        parser.error("--overlap must be at least 0 and smaller than --tile")
    resolve_model_arguments(parser, args)
    if args.far is not None and not 0 < args.far < 1:
        parser.error("--far must be a false-alarm rate between 0 and 1 (exclusive), e.g. 0.001")
    if args.geojson and args.far is None:
        parser.error("--geojson needs --far (the false-alarm rate that decides what is a detection)")
    nodata_rule(args.nodata)  # a bad --nodata stops before anything is read
    path = Path(args.scene)
    _check_scene_path(path)
    default_threads()
    check_writable_dir(args.save_dir)
    device = resolve_device(args.device)
    model_wavelengths = load_wavelengths(args.model_wavelengths) if args.model_wavelengths else None
    detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel, args.branches, device=device,
                                         fusion=args.fusion, rx_precision=args.rx_precision,
                                         model_wavelengths=model_wavelengths)
    background = args.background = args.background or detector.default_background()
    gt = _ground_truth_arg(args)
    with phase("read_validate"):
        scene = read_scene(path, gt, cube_key=args.cube_key, gt_key=args.gt_key, layout=cube_layout(args), lazy=True)
    cube, mask, gt_source, layout_used = scene.cube, scene.mask, scene.gt_source, scene.layout
    if mask is not None and mask.shape != cube.shape[:2]:
        raise FersError(f"{args.gt or path}: ground truth is {mask.shape[0]}×{mask.shape[1]} but the scene "
                        f"{path.name} is {cube.shape[0]}×{cube.shape[1]}; they must match")
    name = path.stem
    georeference = getattr(cube, "georeference", None)
    started = time.perf_counter()
    wavelengths = _scene_wavelengths(args, path)
    source = detector.prepare(cube, args.band_policy, wavelengths, str(path), args.nodata, background)
    prepared, bands, valid = source.cube, source.description, source.valid
    del cube, scene
    if source.rule is not None:
        total = prepared.shape[0] * prepared.shape[1]
        print(f"{name}: {source.masked} of {total} pixels ({100.0 * source.masked / total:.2f} %) are no-data "
              f"({source.rule.describe()}): left out of every statistic, NaN in the maps")
    grid = TileGrid(prepared.shape[0], prepared.shape[1], args.tile, args.overlap)
    print(f"{name}: {prepared.shape[0]}×{prepared.shape[1]}, {bands}"
          + (", stored bands-first (transposed)" if layout_used == "bhw" else "")
          + f"; {len(grid)} tile(s) of "
          f"{grid.tile_rows}×{grid.tile_cols}, {background} RX background; branches={detector.branches}, "
          f"fusion={detector.fusion}, rx_precision={detector.rx_precision}, device={device}")
    from ..report import preload_in_background, save_heatmap

    detector.warm_up()
    preload_in_background()  # matplotlib and scipy.io load while the networks run
    scores = detect_scene(detector, prepared, args.tile, args.overlap, background, args.batch_size,
                          progress=not args.no_progress, valid=valid)
    seconds = time.perf_counter() - started
    del prepared
    if mask is not None and valid is not None:  # metrics over the valid pixels only
        mask, measured = mask[valid], scores[valid]
    else:
        measured = scores
    if mask is not None and not mask.any():
        print(f"warning: {gt_source}: the ground truth has no anomaly pixel; metrics are NaN")
    row = scene_row(name, measure(measured, mask, args.adaptive) if mask is not None else None, seconds=seconds,
                    bands=bands, height=scores.shape[0], width=scores.shape[1], tiles=len(grid),
                    labelled=mask is not None, nodata_pixels=source.masked,
                    band_mapping=source.mapping.record())
    del measured
    config = {**vars(args), **detector.describe(), "device": str(device), "ground_truth": gt_source,
              "cube_layout_used": layout_used, "tile_rows": grid.tile_rows, "tile_cols": grid.tile_cols,
              "nodata_rule": source.rule.describe() if source.rule is not None else None,
              "georeferenced": georeference is not None}
    with phase("write_outputs"), OutputFolder(args.save_dir) as out:
        save_npy(out / f"{name}_scores.npy", scores)
        save_mat(out / f"{name}_scores.mat", {"scores": scores})
        save_heatmap(out / f"{name}_scores.png", scores,
                     f"{name}: {detector.branches} branches, {background} RX"
                     + (f", AUC {row['auc']:.4f}" if "auc" in row else ""))
        row.update(write_scene_maps(out, name, scores, path, georeference, args.far, args.geojson))
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
