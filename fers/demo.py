"""The embedded end-to-end demo: synthetic HAD100-layout data → stage 1 → stage 2 → test.py,
next to plain RX on the same scenes. CPU only, no download, a few minutes on 2 cores.

What is reduced against the paper (and said in the output): a ResNet-18 teacher instead of
Wide-ResNet-101-2, random instead of ImageNet backbones (teacher and ResNet-34), a few epochs
on a few 32×32 crops instead of 60 epochs on HAD100, synthetic scenes instead of HAD100.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

from .errors import FersError, cli_entry
from .utils import REPO_ROOT

REDUCTIONS = ("teacher ResNet-18 (paper: Wide-ResNet-101-2)",
              "random backbones, no ImageNet weights (--no_pretrained)",
              "few epochs on few 32×32 crops (paper: 60 epochs, 64×64, HAD100)",
              "synthetic scenes (endmember mixtures with implanted targets), not HAD100")

PRESETS = {  # n_train, n_test, epochs
    "default": (16, 10, 3),
    "quick": (4, 3, 1),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=str(REPO_ROOT / "demo_output"), help="folder for data, checkpoints, results")
    p.add_argument("--bands", type=int, default=100, help="bands of the synthetic scenes and the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smallest run that exercises every step (for tests)")
    p.add_argument("--keep", action="store_true", help="reuse an existing --output folder instead of replacing it")
    return p


def _stage_arguments(data, checkpoints, run_dir, bands, epochs, seed):
    return ["--data_path", str(data), "--input_channel", str(bands), "--backbone", "resnet18", "--img_size", "32",
            "--epochs", str(epochs), "--no_pretrained", "--checkpoint_dir", str(checkpoints), "--run_dir", str(run_dir),
            "--device", "cpu", "--seed", str(seed), "--no_progress"]


@cli_entry
def main(argv=None):
    args = parser().parse_args(argv)
    from .cli.evaluate import had100_main
    from .cli.train import main as train_main
    from .datasets import had100_manifest
    from .evaluation import Detector, evaluate
    from .synthetic import write_had100_layout

    n_train, n_test, epochs = PRESETS["quick" if args.quick else "default"]
    output = Path(args.output)
    if output.exists() and not args.keep:
        if not (output / "demo.json").exists() and any(output.iterdir()):
            raise FersError(f"{output}: exists and is not a demo folder; choose another --output")
        shutil.rmtree(output)
    started = time.perf_counter()
    print("FERS demo — REDUCED configuration, numbers are NOT the paper's:")
    for item in REDUCTIONS:
        print(f"  - {item}")
    data, checkpoints = output / "data", output / "checkpoints"
    if not (data / "test").is_dir():
        write_had100_layout(data, n_train=n_train, n_test=n_test, size=64, bands=args.bands, seed=args.seed)
    print(f"[1/4] synthetic data: {n_train} training and {n_test} test scenes of 64×64×{args.bands} in {data}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOMLY initialised.*")
        print("[2/4] stage 1 (FERD) and [3/4] stage 2 (FERS) training")
        code = train_main(["--stage", "all", *_stage_arguments(data, checkpoints, output / "runs", args.bands,
                                                             epochs, args.seed)])
    if code:
        return code
    print("[4/4] detection with test.py, and plain global RX on the same scenes")
    save_dir = output / "results"
    had100_main(["--data_path", str(data), "--input_channel", str(args.bands), "--checkpoint_dir", str(checkpoints),
                 "--save_dir", str(save_dir / "fers"), "--device", "cpu", "--no_progress"])
    fers = json.loads((save_dir / "fers" / "results.json").read_text())
    plain = evaluate(Detector(args.bands, rx_precision="float64"), had100_manifest(data), progress=False)
    rx_auc = {r.name: r.auc for r in plain.results}
    rx_mean, _ = plain.mean_auc
    print()
    print(f"{'scene':<12} {'plain RX':>9} {'FERS':>9}")
    for row in fers["scenes"]:
        print(f"{row['name']:<12} {rx_auc[row['name']]:>9.4f} {row['auc']:>9.4f}")
    print(f"{'mean':<12} {rx_mean:>9.4f} {fers['mean_auc']:>9.4f}")
    elapsed = time.perf_counter() - started
    verdict = "beats" if fers["mean_auc"] > rx_mean else "does NOT beat"
    print(f"\nFERS (fused, {fers['config']['fusion']}) {verdict} plain RX on these {len(rx_auc)} synthetic scenes "
          f"({fers['mean_auc']:.4f} vs {rx_mean:.4f}); demo took {elapsed:.0f} s.")
    print("Reduced configuration (see above): these numbers are not the paper's.")
    summary = {"fers_mean_auc": fers["mean_auc"], "rx_mean_auc": rx_mean, "seconds": elapsed, "bands": args.bands,
               "quick": args.quick, "reductions": REDUCTIONS, "fers_per_scene": {r["name"]: r["auc"] for r in fers["scenes"]},
               "rx_per_scene": rx_auc}
    from .outputs import write_json

    write_json(output / "demo.json", summary)
    return 0
