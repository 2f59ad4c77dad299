"""``test.py`` (HAD100) and ``FERS_ABU/test.py`` (ABU and any paired folder): evaluation commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..datasets import HAD100_SENSOR, abu_manifest, had100_manifest
from ..errors import cli_entry
from ..outputs import check_writable_dir
from ..profiling import phase
from ..scene_reader import scene_reader
from ..utils import REPO_ROOT, default_threads, resolve_device
from .common import add_layout_argument, add_model_arguments, check_positive, cube_layout, resolve_model_arguments


def _run(args, scenes, title: str, detect: str = "RX"):
    check_writable_dir(args.save_dir)
    # the first batch is read while torch loads (nothing imported so far loads it), the rest meanwhile
    with scene_reader(scenes, args.input_channel, args.band_policy, args.batch_size) as reader:
        with phase("imports"):
            from ..evaluation import Detector, evaluate, summary_lines, write_outputs
        default_threads()
        device = resolve_device(args.device)
        detector = Detector.from_checkpoints(args.checkpoint_dir, args.input_channel, args.branches, device=device,
                                             fusion=args.fusion, rx_precision=args.rx_precision)
        print(f"{title}: {len(scenes)} scenes, {args.input_channel} bands, branches={detector.branches}, "
              f"fusion={detector.fusion}, rx_precision={detector.rx_precision}, device={device}")
        evaluation = evaluate(detector, scenes, args.band_policy, args.batch_size, detect=detect,
                              ae_steps=getattr(args, "ae_steps", 50), ae_select=getattr(args, "ae_select", "last"),
                              seed=getattr(args, "seed", 0), progress=not args.no_progress, reader=reader)
    run_config = {key: value for key, value in vars(args).items()}
    write_outputs(args.save_dir, evaluation, run_config, title)
    if getattr(args, "report", False):
        from ..report import write_report

        write_report(args.save_dir, scenes, evaluation, args)
    for line in summary_lines(evaluation, title):
        print(line)
    print(f"results written to {args.save_dir}")
    return evaluation


def had100_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="test.py", description="Evaluate FERS/FERD on the HAD100 test set: per-scene AUC and mean.")
    add_model_arguments(parser, default_channels=50)
    parser.add_argument("--data_path", default=str(REPO_ROOT / "data" / "HAD100Dataset"),
                        help="HAD100 root with test/<sensor>/*.npy and ground_truth/<sensor>/*.png")
    parser.add_argument("--sensor", default=HAD100_SENSOR)
    add_layout_argument(parser)
    parser.add_argument("--save_dir", default=None, help="default: results/had100_<C>bands")
    parser.add_argument("--report", action="store_true", help="also write PNG panels and ROC curves")
    return parser


@cli_entry
def had100_main(argv=None):
    parser = had100_parser()
    args = parser.parse_args(argv)
    check_positive(parser, input_channel=args.input_channel, batch_size=args.batch_size)
    resolve_model_arguments(parser, args)
    if args.save_dir is None:
        args.save_dir = str(REPO_ROOT / "results" / f"had100_{args.input_channel}bands")
    scenes = had100_manifest(args.data_path, args.sensor, cube_layout(args))
    _run(args, scenes, f"HAD100 {args.sensor}")
    return 0


def abu_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="FERS_ABU/test.py",
        description="Evaluate FERS on ABU scenes (a folder of .mat files with 'data' and 'map', one such "
                    "file, or the FERS_ABU test/<sensor>/*.npy + ground_truth/<sensor>/*.png layout). A scene "
                    "file without a ground truth of its size is detected without metrics.")
    add_model_arguments(parser, default_channels=200, abu=True)
    parser.add_argument("--data_path", default=str(REPO_ROOT / "data" / "ABU"),
                        help="folder of ABU .mat files, one scene file (.mat/.npz/.npy), or the FERS_ABU "
                             "layout (data/prepare_abu.py)")
    parser.add_argument("--sensor", default=None, help="sensor folder of the FERS_ABU layout (default: all)")
    add_layout_argument(parser)
    parser.add_argument("--save_dir", default=None, help="default: results/abu_<C>bands_<detect>")
    parser.add_argument("--detect", choices=("RX", "AE"), default="RX",
                        help="RX on the enhanced cube, or a per-scene pixel autoencoder")
    parser.add_argument("--ae_steps", type=int, default=50, help="autoencoder training steps per scene")
    parser.add_argument("--ae_select", choices=("last", "min_loss", "oracle"), default="last",
                        help="last / min_loss are label-free; oracle = the reference: step with the best "
                             "ground-truth AUC (results are marked ORACLE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="also write PNG panels and ROC curves")
    return parser


@cli_entry
def abu_main(argv=None):
    parser = abu_parser()
    args = parser.parse_args(argv)
    check_positive(parser, input_channel=args.input_channel, batch_size=args.batch_size, ae_steps=args.ae_steps)
    resolve_model_arguments(parser, args)
    if args.save_dir is None:
        args.save_dir = str(REPO_ROOT / "results" / f"abu_{args.input_channel}bands_{args.detect}")
    scenes = abu_manifest(args.data_path, args.sensor, cube_layout(args))
    _run(args, scenes, f"ABU {Path(args.data_path).name}", detect=args.detect)
    return 0
