"""Seconds per training step and images per second for stage 1 (FERD) and stage 2 (FERS).

Configurations:
- reference: C = 50, 100, 200; batch 16; 64×64 crops; Wide-ResNet-101-2 teacher (stage 1), the
  WRN-101-2 FEN + ResNet-34 spatial branch + restoration network (stage 2);
- small: ResNet-18 and Wide-ResNet-50-2 teachers at 32×32, C = 50, batch 16.

Each step is the full training step of ``fers.training`` (forward, loss, backward, Adam) on random
crops of the reference scale; random-init backbones (the speed does not depend on the weights).
Runs on the CPU and, when one is visible, on the GPU. Prints a table and writes JSON.

    python benchmarks/training_steps.py [--quick] [--devices cpu,cuda] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fers.fen import FEN  # noqa: E402
from fers.training import REFERENCE, Stage1, Stage2  # noqa: E402
from fers.utils import default_threads, device_name, versions  # noqa: E402

REFERENCE_CONFIGS = [("reference", "wide_resnet101_2", channels, 64) for channels in (50, 100, 200)]
SMALL_CONFIGS = [("small", "resnet18", 50, 32), ("small", "wide_resnet50_2", 50, 32)]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(stage: str, backbone: str, channels: int, device: torch.device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --no_pretrained warnings: speed does not depend on weights
        if stage == "stage1":
            return Stage1(channels, backbone, device, pretrained=False)
        return Stage2(channels, FEN(channels, backbone), device, pretrained=False)


def time_steps(stage_obj, x: torch.Tensor, warmup: int, steps: int) -> float:
    """Mean seconds of one full training step (after ``warmup`` untimed steps)."""
    optimizer = torch.optim.Adam(stage_obj.trainable_parameters(), lr=REFERENCE["lr"], betas=REFERENCE["betas"])
    stage_obj.train_mode()

    def step():
        optimizer.zero_grad(set_to_none=True)
        total, _ = stage_obj.loss(x)
        total.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _synchronise(x.device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronise(x.device)
    return (time.perf_counter() - started) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU: 1 timed step, no warm-up (a reference step "
                        "takes minutes on a laptop CPU); CUDA: 2 warm-up, 5 timed (default: CPU 1 warm-up and 3 "
                        "timed, CUDA 5 warm-up and 20 timed)")
    parser.add_argument("--devices", default=None, help="comma list of cpu,cuda (default: cpu, plus cuda if visible)")
    parser.add_argument("--batch_size", type=int, default=REFERENCE["batch_size"])
    parser.add_argument("--only", choices=("reference", "small"), default=None, help="one group of configurations")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "training_steps.json"))
    args = parser.parse_args(argv)
    default_threads()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    configs = [c for c in REFERENCE_CONFIGS + SMALL_CONFIGS if args.only in (None, c[0])]
    rows = []
    header = f"{'device':<28} {'stage':<7} {'config':<10} {'backbone':<17} {'C':>4} {'size':>5} {'batch':>5} " \
             f"{'s/step':>9} {'img/s':>8}"
    print(header)
    print("-" * len(header))
    for device_label in devices:
        device = torch.device(device_label)
        if device.type == "cuda":
            warmup, steps = (2, 5) if args.quick else (5, 20)
        else:
            warmup, steps = (0, 1) if args.quick else (1, 3)
        for group, backbone, channels, size in configs:
            for stage in ("stage1", "stage2"):
                torch.manual_seed(0)
                stage_obj = build(stage, backbone, channels, device)
                x = 0.1 * (2 * torch.rand(args.batch_size, channels, size, size, device=device) - 1)
                seconds = time_steps(stage_obj, x, warmup, steps)
                row = {"device": device_label, "device_name": device_name(device), "stage": stage, "config": group,
                       "backbone": backbone, "channels": channels, "img_size": size, "batch_size": args.batch_size,
                       "seconds_per_step": seconds, "images_per_second": args.batch_size / seconds,
                       "warmup_steps": warmup, "timed_steps": steps}
                rows.append(row)
                print(f"{row['device_name'][:28]:<28} {stage:<7} {group:<10} {backbone:<17} {channels:>4} "
                      f"{size:>5} {args.batch_size:>5} {seconds:>9.3f} {row['images_per_second']:>8.1f}", flush=True)
                del stage_obj, x
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    payload = {"benchmark": "training_steps", "quick": args.quick, "rows": rows, "versions": versions(),
               "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
