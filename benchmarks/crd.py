"""Benchmark: our blocked, batched CRD (``fers.detectors.crd_scores``) against the same formula
written pixel by pixel with NumPy (``fers.detectors.crd_scores_numpy``: ring, ``np.linalg.solve``),
interleaved, on a synthetic 100×100×200 scene (the size of an ABU scene).

    python benchmarks/crd.py [--size 100] [--bands 200] [--windows 5 11] [--rounds 3]

The per-pixel loop runs on the first ``--reference_rows`` rows only (its time is scaled to the
whole scene, ``reference_s``) and gives the largest relative score difference there. Writes
``benchmarks/results/crd.json``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import REPO_ROOT, interleaved_medians, machine, print_table, save_results, setup  # noqa: I100
from fers.detectors import crd_scores, crd_scores_numpy
from fers.synthetic import make_scene


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--bands", type=int, default=200)
    parser.add_argument("--windows", type=int, nargs=2, default=[5, 11], metavar=("WIN_IN", "WIN_OUT"))
    parser.add_argument("--lam", type=float, default=1e-6)
    parser.add_argument("--reference_rows", type=int, default=10, help="rows the per-pixel loop scores")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "results" / "crd.json"))
    args = parser.parse_args(argv)
    device = setup(args.device, args.threads)
    cube, _ = make_scene(args.size, args.size, args.bands, seed=0)
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(cube, 2, 0))).to(device)
    win_in, win_out = args.windows
    rows = min(args.reference_rows, args.size)
    print(f"CRD benchmark on {machine(device)['cpu']}, {torch.get_num_threads()} threads, {device}; "
          f"{args.size}x{args.size}x{args.bands}, windows {win_in}/{win_out}")
    ours = crd_scores(tensor, win_in, win_out, args.lam).cpu().numpy()
    reference = crd_scores_numpy(cube, win_in, win_out, args.lam, rows)
    difference = float(np.max(np.abs(ours[:rows] - reference) / np.abs(reference)))
    timing = interleaved_medians({"reference": lambda: crd_scores_numpy(cube, win_in, win_out, args.lam, rows),
                                  "ours": lambda: crd_scores(tensor, win_in, win_out, args.lam)},
                                 rounds=args.rounds, warmup=0, device=device)
    scale = args.size / rows
    row = {"case": f"{args.size}x{args.size}x{args.bands} windows {win_in}/{win_out}",
           "reference_s": timing["reference"]["median"] * scale, "ours_s": timing["ours"]["median"],
           "ratio": timing["reference"]["median"] * scale / timing["ours"]["median"], "max_rel_diff": difference,
           "reference_rows": rows, "ours_times": timing["ours"]["times"]}
    print_table([row], [("case", "case", ""), ("reference_s", "reference s (scaled)", ".2f"),
                        ("ours_s", "ours s", ".2f"), ("ratio", "ratio", ".1f"), ("max_rel_diff", "max rel diff", ".1e")])
    save_results(args.output, {"benchmark": "crd", "machine": machine(device), "rounds": args.rounds, "rows": [row]})


if __name__ == "__main__":
    main()
