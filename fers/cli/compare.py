"""``compare.py``: baselines and FERS in one harness. Global RX, local dual-window RX, CRD, FERD
(spectral branch only), FERS (both branches) and any other method's precomputed maps (``--maps``)
on the same scenes, the same bands and the same metrics; a table per scene, the mean ± std per
method, a paired Wilcoxon test against the best method, and the protocol manifest
(``protocol.json``) that ``--protocol`` reads back to recompute the table on the same inputs."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__, detectors
from ..checkpoint_files import band_folder, branch_files
from ..datasets import HAD100_SENSOR, abu_manifest, had100_manifest, load_scene
from ..errors import FersError, cli_entry
from ..evaluation import Detector, load_inputs
from ..io import sha256_file
from ..method_maps import SCENE_FIELD, load_method_maps, parse_map_sources
from ..outputs import OutputFolder, check_writable_dir, write_json, write_text
from ..metrics import METRIC_NAMES, mean_ignoring_nan
from ..preprocessing import to_chw
from ..protocol import (PROTOCOL_FILE, apply_options, build_protocol, check_files, check_scenes, read_protocol,
                        scene_entries)
from ..results import measure, metric_keys, metric_means, scene_row, write_results
from ..statistics import MIN_TEST_SCENES, TEST_NAME, ZERO_METHOD, compare_methods
from ..utils import REPO_ROOT, default_threads, resolve_device, versions
from .common import (add_layout_argument, add_model_arguments, check_positive, cube_layout, given_flags,
                     resolve_model_arguments)

METHODS = ("grx", "lrx", "crd", "ferd", "fers")
DEFAULT_METHODS = ("grx", "lrx", "ferd", "fers")
LABELS = {"grx": "GRX", "lrx": "LRX", "crd": "CRD", "ferd": "FERD", "fers": "FERS"}
TABLE_METRICS = ("auc", "auc_dtau", "auc_ftau", "auc_td", "auc_bs", "auc_tdbs", "auc_odp", "auc_od", "snpr_db", "f1")
# The options a protocol manifest fixes (argparse destinations); the others (where files are and
# where results go, device, progress, report) are free on a re-run.
PROTOCOL_OPTIONS = ("layout", "sensor", "cube_layout", "input_channel", "band_policy", "methods", "lrx_windows",
                    "lrx_components", "crd_windows", "crd_lambda", "fusion", "rx_precision", "adaptive")
LRX_RIDGE = 1e-6  # detectors.local_rx_scores' default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", conflict_handler="resolve",
        description="Compare global RX, local RX, CRD, FERD, FERS and other methods' precomputed maps on a dataset "
                    "folder with every metric (AUC, 3D-ROC, F1): a table per scene, the mean ± std per method, a "
                    "paired Wilcoxon test against the best; comparison.json/.csv and protocol.json.")
    add_model_arguments(parser, default_channels=200)
    parser.add_argument("--branches", default=None, help=argparse.SUPPRESS)  # --methods decides
    parser.add_argument("--batch_size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--data_path", default=str(REPO_ROOT / "data" / "ABU"),
                        help="ABU folder (.mat files or the FERS_ABU layout), one .mat scene, or the HAD100 root")
    parser.add_argument("--layout", choices=("abu", "had100"), default="abu",
                        help="dataset layout of --data_path (the cube axes are --cube_layout)")
    add_layout_argument(parser, "--cube_layout")
    parser.add_argument("--sensor", default=None, help=f"sensor folder (HAD100 default: {HAD100_SENSOR})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated subset of grx (global RX), lrx (local dual-window RX), crd "
                             "(collaborative representation), ferd (spectral branch), fers (both branches); "
                             "none = only the --maps methods")
    parser.add_argument("--lrx_windows", default="5,15", help="local RX inner,outer window sizes (odd)")
    parser.add_argument("--lrx_components", type=int, default=20,
                        help="local RX on the first k principal components (0 = all bands: slow, H·W·C² memory)")
    parser.add_argument("--crd_windows", default="5,11", help="CRD inner (guard),outer window sizes (odd)")
    parser.add_argument("--crd_lambda", type=float, default=1e-6,
                        help="CRD regularisation λ of the distance-weighted Tikhonov term (positive)")
    parser.add_argument("--maps", action="append", default=None, metavar="NAME=FOLDER",
                        help="another method's precomputed maps, one .mat/.npy/.npz per scene matched by name "
                             f"(or NAME=PATTERN with {SCENE_FIELD}); repeatable")
    parser.add_argument("--protocol", default=None, metavar="FILE",
                        help="recompute a comparison on exactly the inputs of its protocol.json (scene hashes "
                             "checked; its options used, a conflicting flag refused)")
    parser.add_argument("--adaptive", action="store_true", help="also the adaptive 3D-ROC measures")
    parser.add_argument("--save_dir", default=str(REPO_ROOT / "results" / "compare"))
    parser.add_argument("--report", action="store_true", help="also write PNG panels, ROC curves and box plots")
    return parser


def _parse_methods(parser, text) -> list[str]:
    if isinstance(text, list):  # from a protocol
        text = ",".join(text) or "none"
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    if methods == ["none"]:
        return []
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METHODS)} "
                     "(or none with --maps)")
    return list(dict.fromkeys(methods))


def _parse_windows(parser, text, flag: str, example: str) -> tuple[int, int]:
    if isinstance(text, (list, tuple)):  # from a protocol
        text = ",".join(str(v) for v in text)
    try:
        inner, outer = (int(v) for v in text.split(","))
    except ValueError:
        parser.error(f"{flag} takes two odd integers, e.g. {example}")
    if inner % 2 == 0 or outer % 2 == 0 or not 1 <= inner < outer:
        parser.error(f"{flag}: inner and outer must be odd with inner < outer, e.g. {example}")
    return inner, outer


def missing_checkpoints(checkpoint_dir, channels: int, method: str) -> list[Path]:
    """Checkpoint files a method needs that are not there."""
    folder = band_folder(checkpoint_dir, channels)
    return [folder / name for name in _checkpoint_files(method) if not (folder / name).is_file()]


METHOD_BRANCHES = {"ferd": "spectral", "fers": "both"}  # the networks each method runs


def _checkpoint_files(method: str) -> tuple:
    return branch_files(METHOD_BRANCHES[method])


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
        elif method == "crd":
            scorers[method] = lambda cube: detectors.crd_scores(cube.to(device), *args.crd_windows, args.crd_lambda)
        else:
            missing = missing_checkpoints(args.checkpoint_dir, args.input_channel, method)
            if missing:
                log(f"note: skipping {LABELS[method]}: {', '.join(map(str, missing))} not found "
                    f"(--checkpoint_dir is the parent of '{args.input_channel}bands/')")
                continue
            detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel,
                                                 METHOD_BRANCHES[method], device=device,
                                                 fusion=args.fusion, rx_precision=args.rx_precision)
            scorers[method] = lambda cube, d=detector: d.score(cube[None])[0]
    return scorers


def _detector_settings(args, ran: list) -> dict:
    """Each method's settings for the protocol (checkpoint files with their SHA-256)."""
    settings = {"grx": {"rx": "global", "precision": "float64"},
                "lrx": {"windows": list(args.lrx_windows), "components": args.lrx_components, "ridge": LRX_RIDGE,
                        "border": "cut"},
                "crd": {"windows": list(args.crd_windows), "lambda": args.crd_lambda, "border": detectors.CRD_BORDER,
                        "scaling": "min-max to [0, 1]"}}
    for method in ("ferd", "fers"):
        folder = band_folder(args.checkpoint_dir, args.input_channel)
        settings[method] = {"fusion": args.fusion if method == "fers" else "none", "rx_precision": args.rx_precision,
                            "checkpoints": {name: sha256_file(folder / name) for name in _checkpoint_files(method)}
                            if method in ran else {}}
    return {method: settings[method] for method in ran}


def _apply_protocol(parser, args, argv, protocol) -> None:
    """Put the protocol's options into ``args`` (a conflicting typed flag is an error)."""
    given = given_flags(build_parser(), argv)
    current = {name: getattr(args, name) for name in PROTOCOL_OPTIONS}
    current["lrx_windows"], current["crd_windows"] = list(args.lrx_windows), list(args.crd_windows)
    merged = apply_options(current, given, protocol["options"], args.protocol)
    for name, value in merged.items():
        setattr(args, name, value)
    args.methods = _parse_methods(parser, args.methods)
    args.lrx_windows = _parse_windows(parser, args.lrx_windows, "--lrx_windows", "5,15")
    args.crd_windows = _parse_windows(parser, args.crd_windows, "--crd_windows", "5,11")
    if "data_path" not in given:
        args.data_path = protocol.get("data_path", args.data_path)


def _map_sources(args, protocol) -> dict:
    sources = parse_map_sources(args.maps, reserved=tuple(METHODS) + tuple(LABELS.values()))
    if protocol is None:
        return sources
    recorded = protocol.get("maps", {})
    if args.maps is None:
        return {name: entry["source"] for name, entry in recorded.items()}
    if set(sources) != set(recorded):
        raise FersError(f"`maps` {', '.join(sources) or 'none'} differ from the protocol's "
                        f"{', '.join(recorded) or 'none'} ({args.protocol}); give the same names (the folders may "
                        "move) or drop `maps` to use the recorded folders")
    return {name: sources[name] for name in recorded}


def _check_protocol_files(args, protocol, ran, external) -> None:
    """Checkpoints and external maps against the protocol's SHA-256."""
    for method in ran:
        recorded = protocol.get("detectors", {}).get(method, {}).get("checkpoints")
        if recorded:
            folder = band_folder(args.checkpoint_dir, args.input_channel)
            check_files(recorded, {name: folder / name for name in recorded}, f"{LABELS[method]} checkpoint",
                        args.protocol)
    for name, maps in external.items():
        recorded = protocol["maps"][name]["files"]
        check_files({scene: entry["sha256"] for scene, entry in recorded.items()}, maps.files.files,
                    f"the {name} map of scene", args.protocol)


def format_table(rows: list, means: dict, statistics: dict, labels: dict) -> list[str]:
    """A fixed-width table: per scene one line per method, then each method's mean and standard
    deviation over the scenes, then the AUC mean ± std and the Wilcoxon test against the best."""
    width = max([6] + [len(label) for label in labels.values()])
    header = (f"{'scene':<16} {'method':<{width}} " + " ".join(f"{name:>9}" for name in TABLE_METRICS)
              + f" {'seconds':>8}")
    lines = [header, "-" * len(header)]

    def cells(values):
        return " ".join(f"{_number(values.get(name)):>9.4f}" for name in TABLE_METRICS)

    for row in rows:
        lines.append(f"{row['scene'][:16]:<16} {labels[row['method']]:<{width}} {cells(row)} {row['seconds']:>8.3f}")
    lines.append("-" * len(header))
    for key, title in (("mean", "mean"), ("std", "std")):
        for method, label in labels.items():
            values = statistics["methods"][method][key] if key == "std" else means[method]
            covered = means[method]["scenes_covered"]
            lines.append(f"{title + ' (' + str(covered) + ')':<16} {label:<{width}} {cells(values)} "
                         f"{_number(values.get('seconds')):>8.3f}")
    best = statistics["best"]
    lines.append("")
    lines.append(f"AUC over scenes, mean ± std (sample); {TEST_NAME} against the best"
                 + (f", {labels[best]}" if best else "") + " (zero differences dropped; W = min(W+, W-); "
                 f"no p below {MIN_TEST_SCENES} differing scenes)")
    lines.append(f"{'method':<{width}} {'mean ± std':>17} {'n':>4} {'W':>7} {'p':>9}  note")
    for method, label in labels.items():
        entry = statistics["methods"][method]
        test = entry["test"]
        mean_std = f"{_number(entry['mean'].get('auc')):.4f} ± {_number(entry['std'].get('auc')):.4f}"
        if test is None:
            tail = f"{'':>7} {'':>9}  {'best' if method == best else ''}"
        else:
            statistic = f"{test['statistic']:.1f}" if test["statistic"] is not None else "-"
            p_value = f"{test['p_value']:.4g}" if test["p_value"] is not None else "-"
            short = (f"p needs {MIN_TEST_SCENES} differing scenes" if test["p_value"] is None and test["n"]
                     else test["note"])
            tail = f"{statistic:>7} {p_value:>9}  {short}"
        lines.append(f"{label:<{width}} {mean_std:>17} {entry['n'].get('auc', 0):>4} {tail}".rstrip())
    return lines


def stored_shape(scene) -> tuple:
    """``(rows, cols, bands)`` of a scene as its file holds it (before the band policy)."""
    return load_scene(scene)[0].shape


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _method_summary(rows: list, methods: list, statistics: dict) -> tuple[dict, list]:
    """``means`` (per method: metric means, ``scenes_covered``, mean seconds, as comparison.json always
    had) and the CSV's ``mean`` row per method: the means, the standard deviations (``std_<metric>``)
    and the Wilcoxon test against the best."""
    means, mean_rows = {}, []
    for method in methods:
        method_rows = [row for row in rows if row["method"] == method]
        means[method] = metric_means(method_rows)
        means[method]["scenes_covered"] = mean_ignoring_nan(row["auc"] for row in method_rows)[1]
        means[method]["seconds"] = mean_ignoring_nan(row["seconds"] for row in method_rows)[0]
        test = statistics["methods"][method]["test"] or {}
        stds = {f"std_{name}": value for name, value in statistics["methods"][method]["std"].items()}
        mean_rows.append({"scene": "mean", "method": method, **means[method], **stds,
                          "vs_best": statistics["best"] if method != statistics["best"] else "",
                          "wilcoxon_statistic": test.get("statistic"), "wilcoxon_p": test.get("p_value"),
                          "wilcoxon_n": test.get("n"), "wilcoxon_note": test.get("note", "")})
    return means, mean_rows


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    protocol = read_protocol(args.protocol) if args.protocol else None
    args.methods = _parse_methods(parser, args.methods)
    args.lrx_windows = _parse_windows(parser, args.lrx_windows, "--lrx_windows", "5,15")
    args.crd_windows = _parse_windows(parser, args.crd_windows, "--crd_windows", "5,11")
    if protocol is not None:
        _apply_protocol(parser, args, argv, protocol)
        if protocol.get("fers_version") != __version__:
            print(f"note: {args.protocol} was written by fers {protocol.get('fers_version')}, this is fers "
                  f"{__version__}: the inputs are the same, the code may not be")
    resolve_model_arguments(parser, args)
    methods = args.methods
    check_positive(parser, input_channel=args.input_channel)
    if args.lrx_components < 0:
        parser.error("--lrx_components must be 0 (all bands) or positive")
    if not args.crd_lambda > 0:
        parser.error("--crd_lambda must be positive")
    sources = _map_sources(args, protocol)
    if not methods and not sources:
        parser.error("--methods none needs at least one --maps NAME=FOLDER")
    default_threads()
    check_writable_dir(args.save_dir)
    device = resolve_device(args.device)
    if args.layout == "had100":
        scenes = had100_manifest(args.data_path, args.sensor or HAD100_SENSOR, cube_layout(args))
    else:
        scenes = abu_manifest(args.data_path, args.sensor, cube_layout(args))
    if protocol is not None:
        left_out = len(scenes) - len(protocol["scenes"])
        scenes = check_scenes(protocol, scenes, args.data_path, args.protocol)
        if left_out > 0:
            print(f"note: {left_out} scene(s) of {args.data_path} are not in the protocol and are left out")
    scorers = _scorers(args, methods, device)
    if not scorers and not sources:
        raise FersError(f"{band_folder(args.checkpoint_dir, args.input_channel)}: no method can run "
                        "(checkpoints missing); add grx or lrx to --methods or pass --checkpoint_dir")
    ran = [m for m in methods if m in scorers]
    skipped = {m: "checkpoints missing" for m in methods if m not in scorers}
    if protocol is not None and skipped:
        raise FersError(f"{band_folder(args.checkpoint_dir, args.input_channel)}: the protocol's "
                        f"{', '.join(LABELS[m] for m in skipped)} cannot run (checkpoints missing); pass the "
                        "--checkpoint_dir of the protocol's checkpoints")
    cubes, masks, bands = load_inputs(scenes, args.input_channel, args.band_policy)
    labelled = [mask is not None for mask in masks]  # unlabelled scenes: metrics NaN, left out of the means
    masks = [mask if mask is not None else np.zeros(cube.shape[:2], bool) for mask, cube in zip(masks, cubes)]
    shapes = {scene.name: cube.shape[:2] for scene, cube in zip(scenes, cubes)}
    external = {name: load_method_maps(name, source, shapes) for name, source in sources.items()}
    if protocol is not None:
        _check_protocol_files(args, protocol, ran, external)
    labels = {**{m: LABELS[m] for m in ran}, **{name: name for name in external}}
    print(f"compare: {len(scenes)} scenes, {args.input_channel} bands, methods {', '.join(labels.values())}"
          + (f" (skipped: {', '.join(LABELS[m] for m in skipped)})" if skipped else "") + f", device={device}")
    from tqdm import tqdm

    maps = {method: [] for method in labels}
    rows = []
    bar = tqdm(total=len(scenes) * len(ran), desc="compare", unit="map", disable=args.no_progress, leave=False)
    for index, scene in enumerate(scenes):
        tensor = torch.from_numpy(to_chw(cubes[index]))
        for method in labels:
            if method in external:
                scores = external[method].maps[scene.name]
                seconds, source = external[method].seconds[scene.name], "given"
                description = "the method's own"
            else:
                tick = time.perf_counter()
                scores = scorers[method](tensor)
                scores = np.asarray(scores.cpu().numpy() if torch.is_tensor(scores) else scores, dtype=np.float64)
                seconds, source, description = time.perf_counter() - tick, "measured", bands[index]
                bar.update(1)
            maps[method].append(scores)
            # "scene": the row's name under the key comparison.json has always used (an alias of "name")
            rows.append({"scene": scene.name, "method": method,
                         **scene_row(scene.name, measure(scores, masks[index], args.adaptive), seconds=seconds,
                                     seconds_source=source if math.isfinite(seconds) else "not given",
                                     bands=description, height=scores.shape[0], width=scores.shape[1],
                                     labelled=labelled[index])})
    bar.close()
    statistics = compare_methods(rows, list(labels), metric_keys(rows) + ["seconds"])
    means, summary_rows = _method_summary(rows, list(labels), statistics)
    table = format_table(rows, means, statistics, labels)
    config = {**vars(args), "methods": ran, "maps": sources, "skipped": skipped, "device": str(device),
              "grx_rx_precision": "float64", "metric_names": list(METRIC_NAMES)}
    options = {name: getattr(args, name) for name in PROTOCOL_OPTIONS}
    options.update(methods=ran, lrx_windows=list(args.lrx_windows), crd_windows=list(args.crd_windows))
    run_versions = versions()
    manifest = build_protocol(
        scene_entries(scenes, [stored_shape(scene) for scene in scenes], args.data_path, args.input_channel),
        args.data_path, options, _detector_settings(args, ran), {name: m.manifest() for name, m in external.items()},
        {"metric": statistics["test_metric"], "test": TEST_NAME, "zero_method": ZERO_METHOD,
         "min_test_scenes": MIN_TEST_SCENES, "std": "sample standard deviation (ddof = 1)"}, run_versions)
    with OutputFolder(args.save_dir) as out:
        write_results(out, {"rows": rows, "means": means, "statistics": statistics, "skipped": skipped,
                            "config": config, "protocol_file": PROTOCOL_FILE, "versions": run_versions},
                      rows, summary_rows, stem="comparison")
        write_text(out / "comparison.txt", "\n".join(table) + "\n")
        write_json(out / PROTOCOL_FILE, manifest)
    for line in table:
        print(line)
    if args.report:
        from ..report import write_method_report

        write_method_report(Path(args.save_dir) / "report", scenes, masks,
                            {labels[method]: maps[method] for method in labels})
    print(f"results written to {args.save_dir} (protocol: {Path(args.save_dir) / PROTOCOL_FILE})")
    return 0
