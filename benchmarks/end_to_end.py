"""Benchmark: the whole commands, from process start to exit, by phase, against the reference-style
pipeline run as a whole process on the same files and checkpoints.

    python benchmarks/end_to_end.py [--rounds 3] [--work DIR] [--checkpoint_dir DIR] [--quick]
                                    [--output benchmarks/results/end_to_end.json]

Cases, run as subprocesses, interleaved round by round (medians reported):

- ``import torch`` (``python -c "import os, torch; os._exit(0)"``: the interpreter's teardown after
  torch, 1.4 s here, is left out as the commands leave it out) and ``python test.py --help``: start-up;
- ``test.py --input_channel 200`` on 99 real 64×64×200 scenes (``benchmarks/real_crops.py``: crops
  of the shared ABU scenes in the HAD100 layout; HAD100 itself is not on the project's machines);
- the reference-style ``test.py`` on the same files (``benchmarks/reference_test.py``: one scene at
  a time, autograd on, the per-pixel NumPy RX loop at 200 bands);
- ``FERS_ABU/test.py`` on the 13 ABU scenes, ``detect.py`` on one 150×150 ABU scene,
  ``compare.py`` (GRX, LRX, FERD, FERS) on the first 20 crops;
- the in-process compute of ``test.py``: the same detector and batches of 16 scored by
  ``Detector.score`` in one process after a warm-up (the sum of the kernels the command runs).

Each fers command runs with ``FERS_PROFILE`` (:mod:`fers.profiling`) and reports its phases
(imports, checkpoints, inference copies, reading and validating scenes, data-manifest hashing,
networks, RX, metrics, writing outputs). Checkpoints: random-init networks of the reference
architecture in the reference format (timing does not depend on the weights), unless
``--checkpoint_dir`` is given. Targets (issue 17): test.py ≥ 3× the reference-style process, within
1.3× of the in-process compute; start-up to the first scene ≤ 1 s beyond ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCHMARKS)]

from fers.profiling import PHASES as PROFILE_PHASES  # noqa: E402 (no torch: loads before the timed runs)

CROPS = 99
COMPARE_SCENES = 20
DETECT_SCENE = "abu-beach-1.mat"  # 150×150×188: several tiles, bands interpolated to 200
PHASES = PROFILE_PHASES + ("other",)  # "other": the main thread's time outside any phase


def prepare(work: Path, checkpoint_dir: str | None, scenes: int = CROPS) -> dict:
    """The files the cases read: the crops (and a 20-crop subset for compare.py), checkpoints."""
    from real_crops import ABU_DIR, write_crops

    crops = work / f"crops{scenes}"
    if len(list((crops / "test" / "aviris_ng").glob("*.npy"))) != scenes:
        write_crops(crops, scenes)
    subset = work / f"crops{scenes}-compare"
    if not (subset / "test").is_dir():
        for kind, suffix in (("test", ".npy"), ("ground_truth", ".png")):
            (subset / kind / "aviris_ng").mkdir(parents=True, exist_ok=True)
            for path in sorted((crops / kind / "aviris_ng").glob(f"*{suffix}"))[:COMPARE_SCENES]:
                os.symlink(path, subset / kind / "aviris_ng" / path.name)
    if checkpoint_dir is None:
        checkpoint_dir = work / "checkpoints"
        if not (checkpoint_dir / "200bands" / "spa_fen.pt").is_file():
            from large_scene import write_random_checkpoints

            write_random_checkpoints(checkpoint_dir, 200)
    return {"crops": crops, "crops20": subset, "checkpoints": Path(checkpoint_dir), "abu": ABU_DIR}


def cases(files: dict, work: Path, quick: bool, baseline: str | None = None) -> dict:
    """name → argv (after the interpreter). ``baseline``: another checkout whose ``test.py`` runs on
    the same files too (before/after in one run)."""
    python_files = {"ck": str(files["checkpoints"]), "crops": str(files["crops"])}
    out = work / "out"
    common = ["--input_channel", "200", "--checkpoint_dir", python_files["ck"], "--no_progress"]
    table = {
        "import_torch": ["-c", "import os, torch; os._exit(0)"],  # no teardown: the commands skip it too
        "test_py_help": [str(REPO_ROOT / "test.py"), "--help"],
        "test_py": [str(REPO_ROOT / "test.py"), *common, "--data_path", python_files["crops"],
                    "--save_dir", str(out / "test_py")],
        "reference_test_py": [str(BENCHMARKS / "reference_test.py"), "--input_channel", "200",
                              "--checkpoint_dir", python_files["ck"], "--data_path", python_files["crops"],
                              "--save_dir", str(out / "reference")],
        "compute": [str(Path(__file__).resolve()), "--compute_only", "--data_path", python_files["crops"],
                    "--checkpoint_dir", python_files["ck"]],
    }
    if baseline:
        table["baseline_test_py"] = [str(Path(baseline) / "test.py"), *common, "--data_path", python_files["crops"],
                                     "--save_dir", str(out / "baseline_test_py")]
    if not quick:
        table.update({
            "fers_abu_test_py": [str(REPO_ROOT / "FERS_ABU" / "test.py"), *common, "--data_path", str(files["abu"]),
                                 "--save_dir", str(out / "fers_abu")],
            "detect_py": [str(REPO_ROOT / "detect.py"), str(files["abu"] / DETECT_SCENE), *common,
                          "--save_dir", str(out / "detect")],
            "compare_py": [str(REPO_ROOT / "compare.py"), *common, "--data_path", str(files["crops20"]),
                           "--layout", "had100", "--save_dir", str(out / "compare")],
        })
    return table


def run_case(name: str, argv: list, work: Path, round_index: int) -> dict:
    """Run one case; wall seconds from spawn to exit, and its profile (fers commands)."""
    profile = work / "profiles" / f"{name}-{round_index}.json"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.unlink(missing_ok=True)
    env = dict(os.environ, FERS_PROFILE=str(profile), PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{name} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    result = {"wall": wall}
    if profile.is_file():
        result["profile"] = json.loads(profile.read_text())
    if name == "compute":
        result["compute"] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def phase_seconds(profile: dict) -> dict:
    """Seconds per phase of one profile: main-thread phases, reader-thread phases (overlapped) added
    under their own names, ``imports`` and the main thread's unmarked rest (``other``)."""
    seconds = {"imports": profile.get("imports_seconds") or 0.0, "other": profile["main_thread_other_seconds"]}
    for name, value in profile["phases"].items():
        seconds[name] = seconds.get(name, 0.0) + value["seconds"]
    for phases in profile.get("threads", {}).values():
        for name, value in phases.items():
            seconds[name] = seconds.get(name, 0.0) + value["seconds"]
    return seconds


def compute_only(args) -> None:
    """In-process compute of test.py: Detector.score over the scenes in batches of 16 (median of
    ``--compute_rounds`` after a warm-up); prints one JSON line. OpenMP waits as in the commands."""
    from fers.tuning import configure_openmp

    configure_openmp()
    import numpy as np
    import torch

    from fers.datasets import had100_manifest
    from fers.evaluation import Detector, load_inputs
    from fers.preprocessing import to_batch
    from fers.utils import default_threads

    default_threads()
    detector = Detector.from_checkpoints(args.checkpoint_dir, 200)
    cubes, _, _ = load_inputs(had100_manifest(args.data_path), 200, "interp", log=lambda line: None)
    batches = [to_batch(cubes[start:start + 16]) for start in range(0, len(cubes), 16)]

    def run():
        for batch in batches:
            detector.score(batch)

    run()
    times = []
    for _ in range(args.compute_rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    print(json.dumps({"seconds": statistics.median(times), "times": times, "scenes": len(cubes),
                      "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                      "threads": torch.get_num_threads(), "numpy": np.__version__}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--work", default=None, help="folder for the crops, checkpoints, outputs and profiles "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--checkpoint_dir", default=None, help="checkpoints to use (default: random-init ones)")
    parser.add_argument("--quick", action="store_true", help="only start-up, test.py, the reference and compute")
    parser.add_argument("--scenes", type=int, default=CROPS, help="crops (default %(default)s; fewer: a smoke run)")
    parser.add_argument("--baseline", default=None, help="another checkout (e.g. the main branch) whose test.py "
                        "runs on the same files in the same rounds")
    parser.add_argument("--output", default=str(BENCHMARKS / "results" / "end_to_end.json"))
    parser.add_argument("--compute_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data_path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compute_rounds", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compute_only:
        compute_only(args)
        return 0
    from common import machine, print_table, save_results

    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="fers-e2e-")
    work = Path(args.work or temporary.name)
    files = prepare(work, args.checkpoint_dir, args.scenes)
    table = cases(files, work, args.quick, args.baseline)
    info = machine("cpu")
    print(f"end-to-end benchmark on {info['cpu']}, {info['cores']} cores, load average {info['load_average']}; "
          f"{args.rounds} interleaved rounds")
    runs = {name: [] for name in table}
    for round_index in range(args.rounds + 1):  # round 0 warms the page cache and is not counted
        for name, command in table.items():
            result = run_case(name, command, work, round_index)
            if round_index:
                runs[name].append(result)
            print(f"  round {round_index} {name}: {result['wall']:.2f} s", flush=True)
    rows = []
    for name, results in runs.items():
        row = {"case": name, "wall_s": statistics.median(r["wall"] for r in results),
               "wall_times": [r["wall"] for r in results]}
        if "profile" in results[0]:
            per_round = [phase_seconds(r["profile"]) for r in results]
            row["phases_s"] = {phase: statistics.median(p.get(phase, 0.0) for p in per_round)
                               for phase in PHASES if any(phase in p for p in per_round)}
            marks = [r["profile"].get("marks", {}).get("first_batch") for r in results]
            if all(m is not None for m in marks):
                row["first_batch_s"] = statistics.median(marks)
        if name == "compute":
            row["compute_s"] = statistics.median(r["compute"]["seconds"] for r in results)
        rows.append(row)
    by_name = {row["case"]: row for row in rows}
    torch_s = by_name["import_torch"]["wall_s"]
    ours, reference = by_name["test_py"], by_name["reference_test_py"]
    compute_s = by_name["compute"]["compute_s"]
    summary = {
        "test_py_s": ours["wall_s"], "reference_test_py_s": reference["wall_s"],
        "ratio_vs_reference_style": reference["wall_s"] / ours["wall_s"],
        "in_process_compute_s": compute_s, "whole_over_compute": ours["wall_s"] / compute_s,
        "baseline_test_py_s": by_name.get("baseline_test_py", {}).get("wall_s"),
        "import_torch_s": torch_s, "help_beyond_torch_s": by_name["test_py_help"]["wall_s"] - torch_s,
        "first_batch_beyond_torch_s": ours.get("first_batch_s", float("nan")) - torch_s,
        "targets": {"ratio_vs_reference_style >= 3": reference["wall_s"] / ours["wall_s"] >= 3,
                    "whole_over_compute <= 1.3": ours["wall_s"] / compute_s <= 1.3,
                    "first_batch_beyond_torch_s <= 1": ours.get("first_batch_s", float("inf")) - torch_s <= 1},
        "reference_release_side_by_side": "issue 17: test.py 10.0 s vs the reference release's test.py 24.3 s "
                                          "(2.43x), measured when the issue was filed on an AMD machine; not "
                                          "re-measured here (the reference release is not on the project's machines)",
    }
    for row in rows:
        row["ratio"] = reference["wall_s"] / row["wall_s"] if row["case"] == "test_py" else None
    print()
    print_table(rows, [("case", "case", ""), ("wall_s", "wall s", ".2f"), ("first_batch_s", "first batch s", ".2f")])
    print()
    phase_rows = [{"case": row["case"], **row["phases_s"]} for row in rows if "phases_s" in row]
    print_table(phase_rows, [("case", "phase s", "")] + [(p, p, ".2f") for p in PHASES])
    print()
    for key, value in summary.items():
        if key != "targets":
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    for target, met in summary["targets"].items():
        print(f"target {target}: {'met' if met else 'NOT met'}")
    save_results(args.output, {"benchmark": "end_to_end", "machine": info, "rounds": args.rounds,
                               "scenes": args.scenes, "rows": rows, "summary": summary})
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
