"""``compare.py``: baselines and FERS in one harness. Global RX, local dual-window RX, FERD
(spectral branch only) and FERS (both branches) on the same scenes, the same bands and the same
metrics; a table per scene and the mean per method."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .. import detectors
from ..checkpoints import SPATIAL_FILE, STAGE1_FILES, band_folder
from ..datasets import HAD100_SENSOR, abu_manifest, had100_manifest
from ..errors import FersError, cli_entry
from ..evaluation import Detector, load_inputs
from ..outputs import OutputFolder, check_writable_dir, write_text
from ..metrics import METRIC_NAMES, mean_ignoring_nan
from ..preprocessing import to_chw
from ..results import measure, metric_means, scene_row, write_results
from ..utils import REPO_ROOT, default_threads, resolve_device, versions
from .common import add_layout_argument, add_model_arguments, check_positive, cube_layout, resolve_model_arguments

METHODS = ("grx", "lrx", "ferd", "fers")
LABELS = {"grx": "GRX", "lrx": "LRX", "ferd": "FERD", "fers": "FERS"}
TABLE_METRICS = ("auc", "auc_dtau", "auc_ftau", "auc_td", "auc_bs", "auc_tdbs", "auc_odp", "auc_od", "snpr_db", "f1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", conflict_handler="resolve",
        description="Compare global RX, local RX, FERD and FERS on a dataset folder with every metric "
                    "(AUC, 3D-ROC, F1): a table per scene and the mean per method, comparison.json/.csv.")
    add_model_arguments(parser, default_channels=200)
    parser.add_argument("--branches", default=None, help=argparse.SUPPRESS)  # --methods decides
    parser.add_argument("--batch_size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--data_path", default=str(REPO_ROOT / "data" / "ABU"),
                        help="ABU folder (.mat files or the FERS_ABU layout), one .mat scene, or the HAD100 root")
    parser.add_argument("--layout", choices=("abu", "had100"), default="abu",
                        help="dataset layout of --data_path (the cube axes are --cube_layout)")
    add_layout_argument(parser, "--cube_layout")
    parser.add_argument("--sensor", default=None, help=f"sensor folder (HAD100 default: {HAD100_SENSOR})")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of grx (global RX), lrx (local dual-window RX), "
                             "ferd (spectral branch), fers (both branches)")
    parser.add_argument("--lrx_windows", default="5,15", help="local RX inner,outer window sizes (odd)")
    parser.add_argument("--lrx_components", type=int, default=20,
                        help="local RX on the first k principal components (0 = all bands: slow, H·W·C² memory)")
    parser.add_argument("--adaptive", action="store_true", help="also the adaptive 3D-ROC measures")
    parser.add_argument("--save_dir", default=str(REPO_ROOT / "results" / "compare"))
    parser.add_argument("--report", action="store_true", help="also write PNG panels, ROC curves and box plots")
    return parser


def _parse_methods(parser, text: str) -> list[str]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _parse_windows(parser, text: str) -> tuple[int, int]:
    try:
        inner, outer = (int(v) for v in text.split(","))
    except ValueError:
        parser.error("--lrx_windows takes two odd integers, e.g. 5,15")
    if inner % 2 == 0 or outer % 2 == 0 or not 1 <= inner < outer:
        parser.error("--lrx_windows: inner and outer must be odd with inner < outer, e.g. 5,15")
    return inner, outer


def missing_checkpoints(checkpoint_dir, channels: int, method: str) -> list[Path]:
    """Checkpoint files a method needs that are not there."""
    folder = band_folder(checkpoint_dir, channels)
    needed = list(STAGE1_FILES) + ([SPATIAL_FILE] if method == "fers" else [])
    return [folder / name for name in needed if not (folder / name).is_file()]


def _scorers(args, methods, device, log=print) -> dict:
    """``{method: function (C, H, W) tensor → (H, W) array}`` for the methods that can run."""
    inner, outer = args.lrx_windows
    scorers = {}
    for method in methods:
        if method == "grx":
            detector = Detector(args.input_channel, device=device, rx_precision="float64")
            scorers[method] = lambda cube, d=detector: d.score(cube[None])[0]
        elif method == "lrx":
            scorers[method] = lambda cube: detectors.local_rx_scores(cube.to(device), inner, outer,
                                                                     components=args.lrx_components or None)
        else:
            missing = missing_checkpoints(args.checkpoint_dir, args.input_channel, method)
            if missing:
                log(f"note: skipping {LABELS[method]}: {', '.join(map(str, missing))} not found "
                    f"(--checkpoint_dir is the parent of '{args.input_channel}bands/')")
                continue
            detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel,
                                                 "spectral" if method == "ferd" else "both", device=device,
                                                 fusion=args.fusion, rx_precision=args.rx_precision)
            scorers[method] = lambda cube, d=detector: d.score(cube[None])[0]
    return scorers


def format_table(rows: list[dict], means: dict, methods: list[str]) -> list[str]:
    """A fixed-width table: per scene one line per method, then the mean of each method."""
    header = f"{'scene':<16} {'method':<6} " + " ".join(f"{name:>9}" for name in TABLE_METRICS) + f" {'seconds':>8}"
    lines = [header, "-" * len(header)]

    def cells(values):
        return " ".join(f"{values.get(name, float('nan')):>9.4f}" for name in TABLE_METRICS)

    for row in rows:
        lines.append(f"{row['scene'][:16]:<16} {LABELS[row['method']]:<6} {cells(row)} {row['seconds']:>8.3f}")
    lines.append("-" * len(header))
    for method in methods:
        mean = means[method]
        lines.append(f"{'mean (' + str(mean['scenes_covered']) + ')':<16} {LABELS[method]:<6} {cells(mean)} "
                     f"{mean['seconds']:>8.3f}")
    return lines


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, input_channel=args.input_channel)
    resolve_model_arguments(parser, args)
    methods = _parse_methods(parser, args.methods)
    args.lrx_windows = _parse_windows(parser, args.lrx_windows)
    if args.lrx_components < 0:
        parser.error("--lrx_components must be 0 (all bands) or positive")
    default_threads()
    check_writable_dir(args.save_dir)
    device = resolve_device(args.device)
    if args.layout == "had100":
        scenes = had100_manifest(args.data_path, args.sensor or HAD100_SENSOR, cube_layout(args))
    else:
        scenes = abu_manifest(args.data_path, args.sensor, cube_layout(args))
    scorers = _scorers(args, methods, device)
    if not scorers:
        raise FersError(f"{band_folder(args.checkpoint_dir, args.input_channel)}: no method can run "
                        "(checkpoints missing); add grx or lrx to --methods or pass --checkpoint_dir")
    ran = [m for m in methods if m in scorers]
    skipped = {m: "checkpoints missing" for m in methods if m not in scorers}
    cubes, masks, bands = load_inputs(scenes, args.input_channel, args.band_policy)
    labelled = [mask is not None for mask in masks]  # unlabelled scenes: metrics NaN, left out of the means
    masks = [mask if mask is not None else np.zeros(cube.shape[:2], bool) for mask, cube in zip(masks, cubes)]
    print(f"compare: {len(scenes)} scenes, {args.input_channel} bands, methods {', '.join(LABELS[m] for m in ran)}"
          + (f" (skipped: {', '.join(LABELS[m] for m in skipped)})" if skipped else "") + f", device={device}")
    from tqdm import tqdm

    maps = {method: [] for method in ran}
    rows = []
    bar = tqdm(total=len(scenes) * len(ran), desc="compare", unit="map", disable=args.no_progress, leave=False)
    for index, scene in enumerate(scenes):
        tensor = torch.from_numpy(to_chw(cubes[index]))
        for method in ran:
            tick = time.perf_counter()
            scores = scorers[method](tensor)
            scores = np.asarray(scores.cpu().numpy() if torch.is_tensor(scores) else scores, dtype=np.float64)
            seconds = time.perf_counter() - tick
            maps[method].append(scores)
            # "scene": the row's name under the key comparison.json has always used (an alias of "name")
            rows.append({"scene": scene.name, "method": method,
                         **scene_row(scene.name, measure(scores, masks[index], args.adaptive), seconds=seconds,
                                     bands=bands[index], height=scores.shape[0], width=scores.shape[1],
                                     labelled=labelled[index])})
            bar.update(1)
    bar.close()
    means = {}
    for method in ran:
        method_rows = [row for row in rows if row["method"] == method]
        means[method] = metric_means(method_rows)
        means[method]["scenes_covered"] = mean_ignoring_nan(row["auc"] for row in method_rows)[1]
        means[method]["seconds"] = float(np.mean([row["seconds"] for row in method_rows]))
    table = format_table(rows, means, ran)
    config = {**vars(args), "methods": ran, "skipped": skipped, "device": str(device),
              "grx_rx_precision": "float64", "metric_names": list(METRIC_NAMES)}
    with OutputFolder(args.save_dir) as out:
        write_results(out, {"rows": rows, "means": means, "skipped": skipped, "config": config,
                            "versions": versions()},
                      rows, [{"scene": "mean", "method": method, **values} for method, values in means.items()],
                      stem="comparison")
        write_text(out / "comparison.txt", "\n".join(table) + "\n")
    for line in table:
        print(line)
    if args.report:
        from ..report import write_method_report

        write_method_report(Path(args.save_dir) / "report", scenes, masks,
                            {LABELS[method]: maps[method] for method in ran})
    print(f"results written to {args.save_dir}")
    return 0
