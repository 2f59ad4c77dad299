"""Benchmark: full FERS detection per 64×64 scene (FEN + spatial branch + fusion + RX) with
random-init networks of the reference architecture (WRN-101-2 layer1 FEN, ResNet-34 spatial
branch; no weights needed), ours (``fers.evaluation.Detector.score``: inference mode, folded
BatchNorm, channels-last, batched RX) against the same pipeline written the reference way (one
scene at a time, autograd left on, per-pixel NumPy RX loop above 50 bands), interleaved in one run.

    python benchmarks/detection.py [--bands 50 100 200] [--batch 100] [--rounds 3]
                                   [--device auto] [--output benchmarks/results/detection.json]

Also counts the networks' FLOPs per scene (forward hooks, ``fers.flops``) plus RX's, measures
this process's matrix-multiply throughput (float32 and float64 ``torch.mm``, interleaved with the
candidates so both see the same load) and reports measured time / FLOP-based limit. The limit
(the target) uses the networks' nominal FLOPs, counted on the modules as written; "run" counts
the inference copies fers executes, whose exact shortcuts skip part of that work (see
``fers.evaluation.inference_copy``), so time / run limit is the stricter efficiency figure.
Peak memory is the growth of the process's resident set while one call runs (CUDA: allocator peak).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import (REPO_ROOT, PeakMemory, interleaved_medians, machine, print_table,  # noqa: I100
                    save_results, setup)
from fers import detectors
from fers.evaluation import Detector
from fers.fen import FEN
from fers.flops import network_flops, rx_flops
from fers.preprocessing import normalize_cube, to_chw
from fers.spatial_branch import SpatialBranch
from fers.synthetic import make_scene
from fers.utils import resolve_device
from rx import reference_rx


def reference_detect(fen, spatial, cube: np.ndarray) -> np.ndarray:
    """One normalised ``(H, W, C)`` scene scored the reference way."""
    x = torch.from_numpy(to_chw(cube)).unsqueeze(0)
    spectral, spatial_features = fen(x), spatial(x)  # autograd on, as in the reference test script
    if cube.shape[2] > 50:
        total = (x + spatial_features + spectral)[0].detach().cpu().numpy().transpose(1, 2, 0)
        return reference_rx(total)
    first = detectors.rx_scores((x + spatial_features).detach(), "float32")
    second = detectors.rx_scores((x + spectral).detach(), "float32")
    return (detectors.unit_range(first) * detectors.unit_range(second))[0].numpy()


def run_bands(channels: int, args, device) -> list[dict]:
    torch.manual_seed(channels)
    fen, spatial = FEN(channels).eval(), SpatialBranch(channels).eval()
    detector = Detector(channels, fen, spatial, device=device, rx_precision="reference")
    cubes = [normalize_cube(make_scene(64, 64, channels, seed=seed)[0]) for seed in range(args.batch)]
    batch = torch.from_numpy(np.stack([to_chw(cube) for cube in cubes]))
    reference_cubes = cubes[:args.reference_scenes]

    one = batch[:1]
    net_flops = network_flops(fen, one) + network_flops(spatial, one)  # nominal: the modules as written
    copies = detector._inference_networks()
    executed_flops = sum(network_flops(copy, one.contiguous(memory_format=torch.channels_last)) for copy in copies)
    precision = detector.rx_precision
    rx = rx_flops(64 * 64, channels, "cholesky" if precision == "float64" else "eigen")["total"]
    rx *= 1 if detector.fusion == "sum" else 2

    # same scores (to float32 rounding of the features) before timing anything
    ours_scores = detector.score(batch[:len(reference_cubes)]).cpu().numpy()
    reference_scores = np.stack([reference_detect(fen, spatial, cube) for cube in reference_cubes])
    difference = float(np.max(np.abs(ours_scores - reference_scores)) / np.abs(reference_scores).max())

    a32 = torch.randn(2048, 2048, device=device)
    a64 = torch.randn(1024, 1024, dtype=torch.float64, device=device)
    candidates = {
        "reference": lambda: [reference_detect(fen, spatial, cube) for cube in reference_cubes],
        "ours_batch1": lambda: detector.score(batch[:1]).cpu(),
        f"ours_batch{args.batch}": lambda: detector.score(batch).cpu(),
        "mm32": lambda: torch.mm(a32, a32),
        "mm64": lambda: torch.mm(a64, a64),
    }
    timing = interleaved_medians(candidates, rounds=args.rounds, warmup=1, device=device)
    mm32 = 2 * 2048 ** 3 / timing["mm32"]["median"]
    mm64 = 2 * 1024 ** 3 / timing["mm64"]["median"]
    rx_seconds = rx / (mm64 if precision == "float64" else mm32)
    limit = net_flops / mm32 + rx_seconds
    executed_limit = executed_flops / mm32 + rx_seconds
    reference_per_scene = timing["reference"]["median"] / len(reference_cubes)

    with PeakMemory("cpu") as reference_memory:
        reference_detect(fen, spatial, reference_cubes[0])
    rows = []
    for size in (1, args.batch):
        with PeakMemory(device) as memory:
            detector.score(batch[:size]).cpu()
        per_scene = timing[f"ours_batch{size}"]["median"] / size
        rows.append({
            "case": f"{channels} bands batch{size}", "bands": channels, "batch": size, "rx_precision": precision,
            "fusion": detector.fusion, "ours_s_per_scene": per_scene, "scenes_per_s": 1 / per_scene,
            "peak_mib": memory.peak_mib, "reference_s_per_scene": reference_per_scene,
            "reference_peak_mib": reference_memory.peak_mib, "ratio": reference_per_scene / per_scene,
            "network_gflop_per_scene": net_flops / 1e9, "executed_network_gflop_per_scene": executed_flops / 1e9,
            "rx_gflop_per_scene": rx / 1e9, "mm32_gflops": mm32 / 1e9, "mm64_gflops": mm64 / 1e9,
            "limit_s_per_scene": limit, "time_over_limit": per_scene / limit,
            "executed_limit_s_per_scene": executed_limit, "time_over_executed_limit": per_scene / executed_limit,
            "max_rel_score_diff_vs_reference": difference,
            "ours_times": timing[f"ours_batch{size}"]["times"], "reference_times": timing["reference"]["times"],
        })
        print(f"  {rows[-1]['case']}: ours {per_scene * 1000:.1f} ms/scene, reference {reference_per_scene * 1000:.1f} "
              f"ms/scene, ×{rows[-1]['ratio']:.2f}, {per_scene / limit:.2f}× the FLOP limit", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bands", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--batch", type=int, default=100, help="scenes in the batched case")
    parser.add_argument("--reference_scenes", type=int, default=10,
                        help="scenes the reference pipeline is timed on per round (it runs one at a time)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (the reference pipeline stays on the CPU)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "detection.json"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every core, as the detection commands)")
    args = parser.parse_args(argv)
    setup(threads=args.threads)
    device = resolve_device(args.device)
    info = machine(device)
    print(f"detection benchmark on {info.get('gpu', info['cpu'])}, {torch.get_num_threads()} threads; "
          f"medians of {args.rounds} interleaved rounds")
    rows = [row for channels in args.bands for row in run_bands(channels, args, device)]
    print()
    print_table(rows, [("case", "case", ""), ("ours_s_per_scene", "ours s/scene", ".4f"),
                       ("scenes_per_s", "scenes/s", ".1f"), ("peak_mib", "peak MiB", ".0f"),
                       ("reference_s_per_scene", "reference s/scene", ".4f"), ("ratio", "ratio", ".2f"),
                       ("network_gflop_per_scene", "net GFLOP", ".2f"), ("limit_s_per_scene", "limit s", ".4f"),
                       ("time_over_limit", "time/limit", ".2f"),
                       ("executed_network_gflop_per_scene", "run GFLOP", ".2f"),
                       ("time_over_executed_limit", "time/run limit", ".2f")])
    targets = [r for r in rows if r["bands"] == 200]
    summary = {}
    if targets and device.type == "cpu":
        best = min(targets, key=lambda r: r["ours_s_per_scene"])
        summary = {"target": "200 bands on CPU: ratio >= 2.5 and time/limit <= 1.5",
                   "case": best["case"], "ratio": best["ratio"], "time_over_limit": best["time_over_limit"],
                   "met": best["ratio"] >= 2.5 and best["time_over_limit"] <= 1.5}
        print(f"\ntarget {summary['target']} ({best['case']}): {'met' if summary['met'] else 'NOT met'}")
    save_results(args.output, {"benchmark": "detection", "machine": info, "rounds": args.rounds,
                               "batch": args.batch, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
