"""Data command lines: ``data/prepare_abu.py``, ``data/check.py``, ``data/make_synthetic.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import abu, dataset_check
from ..errors import EXIT_USAGE, FersError, cli_entry
from ..outputs import write_json

# Not fers.utils.REPO_ROOT: importing fers.utils loads torch, which check/prepare_abu do not need.
REPO_ROOT = Path(__file__).resolve().parents[2]


def prepare_abu_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data/prepare_abu.py",
        description="Convert ABU .mat files (keys 'data' and 'map') to the FERS_ABU layout: "
                    "OUTPUT/test/<sensor>/<scene>.npy and OUTPUT/ground_truth/<sensor>/<scene>.png.")
    parser.add_argument("--abu_dir", required=True, help="folder of ABU .mat files (abu-airport-1.mat, ...)")
    parser.add_argument("--output", default=str(REPO_ROOT / "data" / "FERS_ABU"),
                        help="dataset root to write (default: data/FERS_ABU)")
    parser.add_argument("--sensor", default="aviris", help="sensor folder name (the reference uses aviris)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing test/<sensor> folder")
    return parser


@cli_entry
def prepare_abu_main(argv=None):
    args = prepare_abu_parser().parse_args(argv)
    records = abu.prepare_abu(args.abu_dir, args.output, args.sensor, args.overwrite)
    for record in records:
        shape = "×".join(map(str, record["shape"]))
        print(f"{record['name']}: {shape} {record['dtype']}, {record['anomaly_pixels']} anomaly pixels")
    print(f"{len(records)} scenes written to {Path(args.output) / 'test' / args.sensor}; "
          f"evaluate with: python FERS_ABU/test.py --data_path {args.output}")
    return 0


def check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data/check.py",
        description="Validate a HAD100, FERS_ABU or ABU .mat folder: pairs every cube with its ground truth, "
                    "reads each file, reports shape, bands, dtype, range, NaN/Inf, no-data values, constant "
                    "cubes, empty masks and size mismatches. Exit code 0 when all is fine, 2 on problems.")
    parser.add_argument("path", help="dataset root (holding train/, test/, ground_truth/) or a folder of .mat files")
    parser.add_argument("--layout", choices=dataset_check.LAYOUTS, default="auto",
                        help="auto: .mat files → abu, test/ or train/ → had100 (also FERS_ABU)")
    parser.add_argument("--sensor", default=None, help="only this sensor folder (default: all)")
    parser.add_argument("--cube_layout", choices=("hwb", "bhw", "auto"), default=None,
                        help="axes of the cube files: hwb = (rows, cols, bands), bhw = (bands, rows, cols), auto = "
                             "bhw when it looks bands-first; default: hwb, and a cube that looks bands-first is "
                             "reported")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")
    return parser


@cli_entry
def check_main(argv=None):
    args = check_parser().parse_args(argv)
    report = dataset_check.check_dataset(args.path, args.layout, args.sensor, args.cube_layout or "check")
    for line in dataset_check.report_lines(report):
        print(line)
    if args.json:
        try:
            write_json(args.json, report.as_dict())
        except OSError as error:
            raise FersError(f"{args.json}: cannot write the report ({error.strerror or error}); "
                            "free disk space or choose another --json") from None
    if report.problems:
        sys.exit(EXIT_USAGE)
    return 0


def make_synthetic_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data/make_synthetic.py",
        description="Write a synthetic HAD100-layout dataset (train/<sensor>, test/<sensor>, ground_truth/<sensor>) "
                    "of endmember mixtures with implanted sub-pixel and multi-pixel targets; deterministic by seed.")
    parser.add_argument("--output", required=True, help="dataset root to write, e.g. data/SyntheticHAD")
    parser.add_argument("--n_train", type=int, default=40, help="anomaly-free training scenes")
    parser.add_argument("--n_test", type=int, default=10, help="test scenes with targets and ground truth")
    parser.add_argument("--size", type=int, default=64, help="scene height and width in pixels")
    parser.add_argument("--bands", type=int, default=200, help="bands over 400-2500 nm (>= the model's C)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_targets", type=int, default=None, help="targets per test scene (default 6: half "
                                                                   "sub-pixel, half 2-5 px blobs)")
    parser.add_argument("--noise", type=float, default=None, help="sensor noise std at the quietest band "
                                                                  "(default 0.012, reflectance units)")
    parser.add_argument("--sensor", default="aviris_ng")
    parser.add_argument("--overwrite", action="store_true", help="replace existing <split>/<sensor> folders")
    parser.add_argument("--no_rx", action="store_true", help="skip the plain-RX AUC printed at the end")
    return parser


@cli_entry
def make_synthetic_main(argv=None):
    parser = make_synthetic_parser()
    args = parser.parse_args(argv)
    if args.size < 16:
        parser.error("--size must be at least 16")
    if args.bands < 3:
        parser.error("--bands must be at least 3")
    if args.n_train < 0 or args.n_test < 0 or args.n_train + args.n_test == 0:
        parser.error("--n_train and --n_test must be >= 0 and not both 0")
    if args.n_targets is not None and args.n_targets < 0:
        parser.error("--n_targets must be >= 0")
    if args.noise is not None and args.noise < 0:
        parser.error("--noise must be >= 0")
    from .. import synthetic  # scipy.ndimage: loaded only by this command

    info = synthetic.make_synthetic(args.output, args.n_train, args.n_test, args.size, args.bands, args.seed,
                                     args.sensor, args.n_targets, args.noise, args.overwrite)
    print(f"wrote {args.n_train} training and {args.n_test} test scenes of {args.size}×{args.size}×{args.bands} "
          f"to {args.output} (seed {args.seed})")
    if args.n_test and not args.no_rx and (args.n_targets is None or args.n_targets > 0):
        aucs = synthetic.rx_baseline(args.output, args.sensor)
        for name, value in aucs:
            print(f"  {name}: plain RX AUC {value:.4f} ({info['test_scenes'][name]['anomaly_pixels']} anomaly px)")
        print(f"plain RX mean AUC {sum(a for _, a in aucs) / len(aucs):.4f} over {len(aucs)} scenes")
    return 0
