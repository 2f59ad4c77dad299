"""Benchmark: our batched global RX (``fers.detectors.rx_scores``, float64) against the
reference approach (the cube min-max scaled to [0, 1], ``np.cov``, ``np.linalg.pinv`` and a
per-pixel Python loop over ``zᵀ Σ⁺ z``), interleaved in one run, on synthetic 64×64 scenes
(50/100/200 bands; one scene and a batch) and on a 512×512×200 mosaic.

    python benchmarks/rx.py [--batch 100] [--rounds 5] [--output benchmarks/results/rx.json]

Prints seconds per case (medians; single scenes get 4× the rounds), the ratio reference/ours and
the largest relative score difference; writes the same as JSON (ratios included, compared with
the previous file).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import (REPO_ROOT, interleaved_medians, machine, print_table, save_results,  # noqa: I100
                    setup)
from fers.detectors import rx_scores
from fers.flops import rx_flops
from fers.synthetic import make_scene


def reference_rx(cube: np.ndarray) -> np.ndarray:
    """Global RX of one ``(H, W, C)`` cube written the reference way (per-pixel loop)."""
    height, width, channels = cube.shape
    data = cube.astype(np.float64)
    data = (data - data.min()) / (data.max() - data.min())
    pixels = data.reshape(-1, channels)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    mean = pixels.mean(0)
    scores = np.empty(len(pixels))
    for index in range(len(pixels)):
        z = pixels[index] - mean
        scores[index] = z.T @ inverse @ z
    return scores.reshape(height, width)


def as_batch(cubes: list[np.ndarray]) -> torch.Tensor:
    """Equal-shape ``(H, W, C)`` cubes as one ``(N, C, H, W)`` tensor (a channels-last view; the
    input a batch of scenes arrives as, built outside the timing as the reference's list is)."""
    return torch.from_numpy(np.stack(cubes)).permute(0, 3, 1, 2)


def ours(batch: torch.Tensor) -> np.ndarray:
    """Batched float64 RX → ``(N, H, W)``."""
    return rx_scores(batch, "float64").numpy()


def max_relative_difference(scores: np.ndarray, reference: np.ndarray) -> float:
    """Largest ``|ours − reference| / reference`` over all pixels (RX scores are positive)."""
    floor = 1e-12 * np.abs(reference).max()
    return float(np.max(np.abs(scores - reference) / np.maximum(np.abs(reference), floor)))


def run_case(name: str, cubes: list[np.ndarray], rounds: int) -> dict:
    batch = as_batch(cubes)
    reference_scores = np.stack([reference_rx(cube) for cube in cubes])
    difference = max_relative_difference(ours(batch), reference_scores)
    timing = interleaved_medians({"reference": lambda: [reference_rx(cube) for cube in cubes],
                                  "ours": lambda: ours(batch)}, rounds=rounds, warmup=1)
    height, width, channels = cubes[0].shape
    flops = rx_flops(height * width, channels)["total"] * len(cubes)
    row = {"case": name, "scenes": len(cubes), "shape": f"{height}x{width}x{channels}",
           "reference_s": timing["reference"]["median"], "ours_s": timing["ours"]["median"],
           "ratio": timing["reference"]["median"] / timing["ours"]["median"],
           "max_rel_diff": difference, "ours_gflops": flops / timing["ours"]["median"] / 1e9,
           "reference_times": timing["reference"]["times"], "ours_times": timing["ours"]["times"]}
    print(f"  {name}: reference {row['reference_s']:.4f} s, ours {row['ours_s']:.4f} s, "
          f"×{row['ratio']:.1f}, max rel diff {difference:.1e}", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bands", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--batch", type=int, default=100, help="scenes in the batched cases")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--large", type=int, default=512, help="side of the large mosaic scene (0 = skip)")
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "rx.json"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every core, as the detection commands)")
    args = parser.parse_args(argv)
    setup("cpu", args.threads)
    print(f"RX benchmark on {machine()['cpu']}, {torch.get_num_threads()} threads; "
          f"medians of {args.rounds} interleaved rounds")
    scenes = {bands: [make_scene(64, 64, max(args.bands), seed=seed)[0] for seed in range(max(args.batch, 1))]
              for bands in [max(args.bands)]}[max(args.bands)]
    rows = []
    for bands in args.bands:
        cubes = [np.ascontiguousarray(scene[:, :, :bands]) for scene in scenes]
        rows.append(run_case(f"64x64x{bands} single", cubes[:1], 4 * args.rounds))  # milliseconds each: more rounds
        if args.batch > 1:
            rows.append(run_case(f"64x64x{bands} batch{args.batch}", cubes, max(2, args.rounds // 2)))
    if args.large:
        tiles = args.large // 64
        mosaic = [scenes[(r * tiles + c) % len(scenes)] for r in range(tiles) for c in range(tiles)]
        large = np.concatenate([np.concatenate(mosaic[r * tiles:(r + 1) * tiles], 1) for r in range(tiles)], 0)
        rows.append(run_case(f"{large.shape[0]}x{large.shape[1]}x{large.shape[2]} single", [large],
                             max(2, args.rounds // 2)))
    print()
    print_table(rows, [("case", "case", ""), ("reference_s", "reference s", ".4f"), ("ours_s", "ours s", ".4f"),
                       ("ratio", "ratio", ".1f"), ("max_rel_diff", "max rel diff", ".1e"),
                       ("ours_gflops", "ours GFLOP/s", ".1f")])
    target = next((r for r in rows if r["case"] == "64x64x200 single"), None)
    summary = {}
    if target:
        summary = {"target": "64x64x200 single: ratio >= 10 and max rel diff <= 1e-6",
                   "met": target["ratio"] >= 10 and target["max_rel_diff"] <= 1e-6}
        print(f"\ntarget {summary['target']}: {'met' if summary['met'] else 'NOT met'}")
    save_results(args.output, {"benchmark": "rx", "machine": machine(), "rounds": args.rounds,
                               "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
