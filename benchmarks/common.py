"""Shared helpers of the benchmark scripts: interleaved timing with medians, peak memory,
the machine's matrix-multiply throughput, machine description, table and JSON output.

Timings on a shared machine are noisy: every benchmark runs its candidates *interleaved*
(reference, ours, reference, ours, ...) and reports medians, so a burst of load hits both.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from fers.io import write_json  # noqa: E402
from fers.tuning import cpu_model, usable_cpus  # noqa: E402,F401 (cpu_model re-exported for the benchmarks)
from fers.utils import default_threads, versions  # noqa: E402


def synchronise(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


SETTLE_SECONDS = 0.2
WAKE_CALL_BELOW_SECONDS = 0.5


def _settle(seconds: float) -> None:
    """Busy-wait (a sleep lets the VM park the cores: the next call then pays a wake-up of ~10 ms)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def interleaved_medians(candidates: dict, rounds: int = 5, warmup: int = 1, device="cpu",
                        settle: float = SETTLE_SECONDS) -> dict:
    """Run each callable of ``candidates`` (name → fn) once per round, in turn, after ``warmup``
    untimed rounds; returns name → {"median": s, "min": s, "times": [...]} of steady-state calls.

    Each timed call starts ``settle`` seconds after the previous candidate ended, because NumPy's
    OpenBLAS workers keep spinning for about 0.1 s after a call and a torch call started inside that
    window shares the cores with them (measured: RX 2× slower right after the NumPy reference).
    A candidate faster than ``WAKE_CALL_BELOW_SECONDS`` is called once untimed just before, so the
    first-call cost of idle worker threads (up to 10× a 1 ms call here) does not count.
    """
    durations = {name: 0.0 for name in candidates}
    for _ in range(warmup):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            synchronise(device)
            durations[name] = time.perf_counter() - start
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            _settle(settle)
            if durations[name] < WAKE_CALL_BELOW_SECONDS:
                fn()
            synchronise(device)
            start = time.perf_counter()
            fn()
            synchronise(device)
            durations[name] = time.perf_counter() - start
            times[name].append(durations[name])
    return {name: {"median": statistics.median(t), "min": min(t), "times": t} for name, t in times.items()}


def matmul_flops_per_second(size: int = 2048, dtype=torch.float32, repeats: int = 5, device="cpu") -> float:
    """Measured throughput of a ``size × size`` matrix product (FLOP/s, median over ``repeats``),
    in this process with its thread setting: the practical limit of dense network arithmetic."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    seconds = interleaved_medians({"mm": lambda: torch.mm(a, b)}, rounds=repeats, device=device)["mm"]["median"]
    return 2 * size ** 3 / seconds


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Hand memory freed earlier back to the OS (glibc ``malloc_trim``), so that a block reusing
    it still shows up as resident-set growth; a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the level at entry while the block runs: CUDA allocator peak on a GPU,
    resident set size sampled every millisecond on the CPU (Linux ``/proc``; freed heap memory
    is returned to the OS first). ``.peak_mib``."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.peak_mib = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/statm").exists():
            _release_free_heap()
            self._base = self._peak = _rss_bytes()
            self._running = True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2 ** 20
        elif hasattr(self, "_thread"):
            self._running = False
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mib = (self._peak - self._base) / 2 ** 20
        return False


def machine(device="cpu") -> dict:
    """What the numbers were measured on."""
    device = torch.device(device)
    info = {"cpu": cpu_model(), "cores": len(usable_cpus()), "torch_threads": torch.get_num_threads(),
            "device": str(device), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            **versions()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def setup(device="cpu", threads: int | None = None) -> torch.device:
    """Threads as the detection commands set them (or ``threads``); returns the device."""
    if threads:
        torch.set_num_threads(threads)
    else:
        default_threads()
    return torch.device(device)


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` with ``columns`` = (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([format(row[key], fmt) if isinstance(row.get(key), (int, float)) else str(row.get(key, ""))
                      for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for index, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def save_results(path, payload: dict, ratio_key: str = "ratio") -> None:
    """Write ``payload`` as JSON (atomically) and print how each row's ``ratio_key`` moved against
    the previous file at ``path`` (rows matched by their ``case`` field), so regressions show."""
    path = Path(path)
    if path.exists():
        try:
            previous = {row["case"]: row for row in json.loads(path.read_text()).get("rows", [])}
        except (OSError, ValueError, KeyError, TypeError):
            previous = {}
        for row in payload.get("rows", []):
            old = previous.get(row["case"], {}).get(ratio_key)
            if old and row.get(ratio_key):
                print(f"  {row['case']}: {ratio_key} {row[ratio_key]:.2f} (previous run {old:.2f})")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)
    print(f"wrote {path}")
