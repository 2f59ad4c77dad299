"""Benchmark: FERS on one CUDA device in a few minutes: detection per scene at batch 1 and 100, peak
allocator memory, training step time of both stages at the reference sizes (float32 and ``--amp``),
the loss curve with and without mixed precision, and two-process DistributedDataParallel for a
few steps.

    python benchmarks/gpu.py [--device cuda] [--output benchmarks/results/gpu.json]
    python benchmarks/gpu.py --device cpu --quick --output /tmp/gpu-dry-run.json   # the CPU dry run

- detection: random-init networks of the reference architecture (WRN-101-2 layer1 FEN, ResNet-34
  spatial branch), ``Detector.score`` on 64×64 scenes of 50/100/200 bands at batch 1 and 100
  (``--quick``: 200 bands, batch 1 and 4): seconds per scene (median of interleaved rounds),
  scenes/s, the allocator's peak above the inputs;
- training: one full step (forward, loss, backward, Adam) of stage 1 (WRN-101-2 teacher) and stage 2
  at the reference sizes (batch 16, 64×64 crops, C = 50/100/200; ``--quick``: ResNet-18 teacher,
  32×32, C = 50), in float32 and, on CUDA, with ``amp`` (:class:`fers.training.loop.MixedPrecision`);
- loss curve: the same stage-1 run (same seed and crops, ``--curve_steps`` steps) in float32 and
  with ``amp``: each step's loss and the largest relative difference;
- DDP: two processes, each with half of the global batch of 16, stage 1 for ``--ddp_steps`` steps
  (NCCL when two GPUs are visible; one GPU cannot hold two NCCL ranks, so both processes share it
  over gloo, as on the CPU); seconds per step and whether both ranks end with the same weights.

Random inputs and weights: speed does not depend on them. Peak memory on the CPU is the rise of
the resident set (``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS.parent), str(BENCHMARKS)]

import torch  # noqa: E402

from common import PeakMemory, interleaved_medians, machine, save_results, setup, synchronise  # noqa: E402
from training_steps import build as build_stage  # noqa: E402


def detection_rows(device: torch.device, bands: list, batches: list, rounds: int) -> list:
    from fers.evaluation import Detector
    from fers.fen import FEN
    from fers.spatial_branch import SpatialBranch

    rows = []
    for channels in bands:
        torch.manual_seed(channels)
        detector = Detector(channels, FEN(channels), SpatialBranch(channels), device=device, rx_precision="reference")
        scenes = (torch.rand(max(batches), channels, 64, 64) * 0.2 - 0.1).to(device)
        candidates = {size: (lambda size=size: detector.score(scenes[:size])) for size in batches}
        timing = interleaved_medians(candidates, rounds=rounds, device=device)
        for size in batches:
            with PeakMemory(device) as memory:
                detector.score(scenes[:size])
            per_scene = timing[size]["median"] / size
            rows.append({"case": f"detection {channels} bands batch{size}", "bands": channels, "batch": size,
                         "s_per_scene": per_scene, "scenes_per_s": 1 / per_scene, "peak_mib": memory.peak_mib,
                         "rx_precision": detector.rx_precision, "times": timing[size]["times"]})
            print(f"  detection {channels} bands, batch {size}: {per_scene * 1000:.2f} ms/scene, "
                  f"{1 / per_scene:.1f} scenes/s, peak {memory.peak_mib:.0f} MiB", flush=True)
        del detector, scenes
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def training_step(stage_obj, optimizer, precision, x):
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        total, _ = stage_obj.loss(x)
    precision.step(total, optimizer)
    return total


def training_rows(device: torch.device, configs: list, batch: int, steps: int, amp_modes: list) -> list:
    from fers.training import REFERENCE
    from fers.training.loop import MixedPrecision

    rows = []
    for backbone, channels, size in configs:
        for stage in ("stage1", "stage2"):
            for amp in amp_modes:
                torch.manual_seed(0)
                stage_obj = build_stage(stage, backbone, channels, device)
                stage_obj.train_mode()
                optimizer = torch.optim.Adam(stage_obj.trainable_parameters(), lr=REFERENCE["lr"],
                                             betas=REFERENCE["betas"])
                precision = MixedPrecision(amp, device)
                x = 0.1 * (2 * torch.rand(batch, channels, size, size, device=device) - 1)
                with PeakMemory(device) as memory:
                    training_step(stage_obj, optimizer, precision, x)  # warm-up (also the memory peak)
                times = []
                for _ in range(steps):
                    synchronise(device)
                    start = time.perf_counter()
                    training_step(stage_obj, optimizer, precision, x)
                    synchronise(device)
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                rows.append({"case": f"train {stage} {backbone} C{channels} {size}px{' amp' if amp else ''}",
                             "stage": stage, "backbone": backbone, "channels": channels, "img_size": size,
                             "batch": batch, "amp": amp, "amp_dtype": str(precision.dtype) if amp else None,
                             "s_per_step": seconds, "images_per_s": batch / seconds, "peak_mib": memory.peak_mib,
                             "times": times})
                print(f"  {rows[-1]['case']}: {seconds:.3f} s/step, {batch / seconds:.1f} img/s, "
                      f"peak {memory.peak_mib:.0f} MiB", flush=True)
                del stage_obj, optimizer, x
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def loss_curve(device: torch.device, backbone: str, channels: int, size: int, batch: int, steps: int) -> dict:
    """Stage-1 losses per step in float32 and with amp, from the same seed and crops."""
    from fers.training import REFERENCE
    from fers.training.loop import MixedPrecision

    generator = torch.Generator().manual_seed(1)
    crops = 0.1 * (2 * torch.rand(steps, batch, channels, size, size, generator=generator) - 1)
    curves = {}
    for amp in (False, True):
        torch.manual_seed(0)
        stage_obj = build_stage("stage1", backbone, channels, device)
        stage_obj.train_mode()
        optimizer = torch.optim.Adam(stage_obj.trainable_parameters(), lr=REFERENCE["lr"], betas=REFERENCE["betas"])
        precision = MixedPrecision(amp, device)
        curves["amp" if amp else "float32"] = [float(training_step(stage_obj, optimizer, precision,
                                                                   crops[step].to(device))) for step in range(steps)]
    relative = [abs(a - f) / abs(f) for a, f in zip(curves["amp"], curves["float32"])]
    print(f"  loss curve over {steps} steps: float32 {curves['float32'][0]:.4f} → {curves['float32'][-1]:.4f}, "
          f"amp {curves['amp'][0]:.4f} → {curves['amp'][-1]:.4f}; largest relative difference {max(relative):.2e}")
    return {"backbone": backbone, "channels": channels, "img_size": size, "batch": batch, "steps": steps,
            **curves, "max_relative_difference": max(relative), "last_relative_difference": relative[-1]}


def _ddp_worker(rank: int, world: int, port: int, backend: str, device_name: str, backbone: str, channels: int,
                size: int, batch: int, steps: int, results) -> None:
    import torch.distributed as distributed

    from fers.training import REFERENCE
    from fers.training.distributed import Distributed
    from fers.training.loop import MixedPrecision

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    distributed.init_process_group(backend, rank=rank, world_size=world)
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist = Distributed(world, rank, device)
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    stage_obj = build_stage("stage1", backbone, channels, device)
    stage_obj.wrap(dist.wrapper())
    stage_obj.train_mode()
    optimizer = torch.optim.Adam(stage_obj.trainable_parameters(), lr=REFERENCE["lr"], betas=REFERENCE["betas"])
    plain = MixedPrecision(False, device)  # float32 steps
    generator = torch.Generator().manual_seed(10 + rank)  # each rank its own half of the batch
    times = []
    for step in range(steps + 1):
        x = (0.1 * (2 * torch.rand(batch // world, channels, size, size, generator=generator) - 1)).to(device)
        synchronise(device)
        start = time.perf_counter()
        training_step(stage_obj, optimizer, plain, x)
        synchronise(device)
        if step:  # step 0 builds DDP's buckets
            times.append(time.perf_counter() - start)
    flat = torch.cat([p.detach().flatten() for p in stage_obj.trainable_parameters()]).double()
    highest, negated_lowest = flat.clone(), -flat
    distributed.all_reduce(highest, op=distributed.ReduceOp.MAX)
    distributed.all_reduce(negated_lowest, op=distributed.ReduceOp.MAX)
    difference = float((highest + negated_lowest).max())  # largest spread of any weight across the ranks
    if rank == 0:
        results.put({"times": times, "max_weight_difference_between_ranks": difference})
    distributed.barrier()
    distributed.destroy_process_group()


def ddp_row(device: torch.device, backend: str | None, backbone: str, channels: int, size: int, batch: int,
            steps: int) -> dict:
    import torch.multiprocessing as multiprocessing

    if backend is None:
        backend = "nccl" if device.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    multiprocessing.start_processes(_ddp_worker, args=(2, port, backend, str(device), backbone, channels, size, batch,
                                                       steps, results), nprocs=2, join=True, start_method="spawn")
    result = results.get()
    seconds = statistics.median(result["times"])
    row = {"case": f"ddp 2 processes {backend} stage1 {backbone} C{channels} {size}px", "backend": backend,
           "processes": 2, "global_batch": batch, "steps": steps, "s_per_step": seconds,
           "images_per_s": batch / seconds, "gpus": torch.cuda.device_count() if device.type == "cuda" else 0, **result}
    print(f"  {row['case']}: {seconds:.3f} s/step, {batch / seconds:.1f} img/s; weights equal across ranks "
          f"to {result['max_weight_difference_between_ranks']:.1e}", flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run): 200 bands at batch 1 "
                        "and 4, ResNet-18 stages at 32×32, C = 50, few steps")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved detection rounds (medians)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 10, --quick 1)")
    parser.add_argument("--curve_steps", type=int, default=None, help="loss-curve steps (default 30, --quick 3)")
    parser.add_argument("--ddp_steps", type=int, default=None, help="DDP steps (default 5, --quick 2)")
    parser.add_argument("--ddp_backend", choices=("nccl", "gloo"), default=None,
                        help="default: nccl with two GPUs, else gloo")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--output", default=str(BENCHMARKS / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    device = setup(args.device, args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; run with --device cpu --quick for a dry run of the script")
    quick = args.quick
    steps = args.steps or (1 if quick else 10)
    curve_steps = args.curve_steps or (3 if quick else 30)
    ddp_steps = args.ddp_steps or (2 if quick else 5)
    info = machine(device)
    started = time.perf_counter()
    print(f"GPU benchmark on {info.get('gpu', info['cpu'])} ({device}); {'quick' if quick else 'full'} run")
    rows = detection_rows(device, [200] if quick else [50, 100, 200], [1, 4] if quick else [1, 100],
                          2 if quick else args.rounds)
    configs = [("resnet18", 50, 32)] if quick else [("wide_resnet101_2", c, 64) for c in (50, 100, 200)]
    amp_modes = [False, True] if device.type == "cuda" else [False]
    rows += training_rows(device, configs, 16, steps, amp_modes)
    curve = None
    if device.type == "cuda":
        curve = loss_curve(device, *(("resnet18", 50, 32) if quick else ("wide_resnet101_2", 50, 64)), 16, curve_steps)
    else:
        print("  loss curve with amp: skipped (mixed precision runs on a CUDA device)")
    backbone, channels, size = ("resnet18", 50, 32) if quick else ("wide_resnet101_2", 200, 64)
    rows.append(ddp_row(device, args.ddp_backend, backbone, channels, size, 16, ddp_steps))
    seconds = time.perf_counter() - started
    print(f"done in {seconds:.0f} s")
    save_results(args.output, {"benchmark": "gpu", "machine": info, "quick": quick, "rows": rows,
                               "amp_loss_curve": curve, "seconds": seconds}, ratio_key="s_per_scene")
    return 0


if __name__ == "__main__":
    sys.exit(main())
