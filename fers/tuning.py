"""CPU tuning that follows the machine: chunk sizes and blocking thresholds from the cache sizes and
the cores this process may use, read once at run time (or measured once and cached).

The detection code splits work for the CPU caches: RX one scene at a time, the FEN two scenes per
forward pass, the spatial branch four, the float64 scaling of a cube in blocks. Those numbers were
first chosen on one VM; here they come from rules on the machine's figures, which give the measured
choices back on the machines they were measured on:

- ``rx_scenes_per_solve``: scenes per float64 RX solve = how many scenes' float64 working sets
  (centred pixels ``P·C`` + covariance ``C²``) fit in the L2 caches of the cores in use, at least 1
  (64×64×200: 6.6 MB per scene, more than the L2 of any current CPU: one scene);
- ``network_chunk``: the FEN (its layer1 works on 70×70 maps of 256 channels, ≈ 5 MB per scene in
  float32) takes as many scenes as fit in half the last-level cache share of the cores in use, at
  least 1 and at most the thread count (2 on a 2-core VM with a 32 MB L3); the spatial branch, whose
  4×4 and 8×8 maps are too small to keep the cores busy with one scene, takes twice the thread count;
- ``pipeline_chunk``: the larger of the two network chunks (scenes carried together through
  features, fusion and RX; small enough to reuse freed memory);
- ``gram_blocked_min_channels``: from this band count on, the covariance is computed as three
  half-size products (3/4 of the multiplications); below it one product is faster. 128 unless a
  measured value is cached (``python -m fers.tuning --calibrate``), because the break-even point
  depends on the BLAS kernels, not on a cache size;
- ``scaling_block_values``: float64 values per block of the input scaling (one L2 cache).

``python -m fers.tuning`` prints the figures and the values chosen; ``--calibrate`` times the
candidates of the measured knobs on this machine and caches the winners in
``<user cache dir>/fers/tuning.json`` (keyed by CPU model, core count and torch version), which later
runs read. Every value is only a speed choice: the scores are the same to rounding for any of them
(tested), and each ``Detector``/``rx_scores`` argument still overrides it.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from pathlib import Path

# Fallbacks when /sys does not say (the figures of the VM the constants were first chosen on).
DEFAULT_L2_BYTES = 1 << 20
DEFAULT_LLC_BYTES = 32 << 20
FEN_SCENE_BYTES = 256 * 70 * 70 * 4  # the FEN's largest activation per 64×64 scene (layer1 output)
GRAM_BLOCKED_MIN_CHANNELS = 128  # covariance blocked from this band count on, unless calibrated (first VM)
CACHE_ENV = "FERS_TUNING_CACHE"  # overrides the cache file's path ("off": never read or write one)


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


def usable_cpus() -> set:
    """The CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def cache_levels(root: str = "/sys/devices/system/cpu") -> dict:
    """``{level: bytes}`` of the data/unified caches reachable by the CPUs in use, each cache counted
    once (an L2 per core adds up, a shared L3 counts once), from Linux's ``/sys``; ``{}`` elsewhere."""
    seen, sizes = set(), {}
    for cpu in sorted(usable_cpus()):
        folder = Path(root) / f"cpu{cpu}" / "cache"
        for index in sorted(folder.glob("index*")):
            try:
                kind = (index / "type").read_text().strip()
                if kind not in ("Data", "Unified"):
                    continue
                level = int((index / "level").read_text())
                shared = (index / "shared_cpu_list").read_text().strip()
                size = _parse_size((index / "size").read_text())
            except (OSError, ValueError):
                continue
            if (level, shared) in seen:
                continue
            seen.add((level, shared))
            sizes[level] = sizes.get(level, 0) + size
    return sizes


def _threads() -> int:
    import sys

    torch = sys.modules.get("torch")  # the thread count the commands set; no torch import for this
    return max(1, torch.get_num_threads() if torch is not None else len(usable_cpus()))


@functools.lru_cache(maxsize=None)
def machine() -> dict:
    """The figures the rules use: cores in use, L2 (per-core caches added up) and last-level cache
    share of those cores, CPU model."""
    levels = cache_levels()
    l2 = levels.get(2, DEFAULT_L2_BYTES)
    llc = levels.get(max(levels), DEFAULT_LLC_BYTES) if levels else DEFAULT_LLC_BYTES
    return {"cpu": cpu_model(), "cores": len(usable_cpus()), "l2_bytes": l2, "llc_bytes": llc,
            "cache_levels": levels}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- the rules


def rx_scenes_per_solve(pixels: int, channels: int) -> int:
    """Scenes per float64 RX solve on the CPU (see the module docstring)."""
    working_set = 8 * (pixels * channels + channels * channels)
    return max(1, machine()["l2_bytes"] // max(working_set, 1))


def network_chunk() -> dict:
    """Scenes per forward pass on the CPU, by network (see the module docstring)."""
    threads = _threads()
    fen = max(1, min(threads, (machine()["llc_bytes"] // 2) // FEN_SCENE_BYTES))
    return {"fen": {"cpu": fen}, "spatial": {"cpu": 2 * threads}}


def pipeline_chunk() -> dict:
    """Scenes per pass through features, fusion and RX on the CPU."""
    chunks = network_chunk()
    return {"cpu": max(chunks["fen"]["cpu"], chunks["spatial"]["cpu"])}


def scaling_block_values() -> int:
    """Float64 values per block of the input scaling (one L2 cache of one core, at least 4096)."""
    per_core = machine()["l2_bytes"] // max(1, machine()["cores"])
    return max(4096, per_core // 8)


def gram_blocked_min_channels() -> int:
    """Band count from which the covariance is computed in three half-size blocks."""
    return int(cached().get("gram_blocked_min_channels", GRAM_BLOCKED_MIN_CHANNELS))


# --------------------------------------------------------------------------- OpenMP waiting

_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def configure_openmp(environ=None) -> str | None:
    """Before torch is loaded (the commands call this first): OpenMP's waiting threads sleep at once
    (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning. A spinning thread whose partner was preempted
    (by another process, or by the commands' own scene reader) burns the core the partner needs, at
    every one of the many small parallel regions of RX and the convolutions. Measured on the 2-vCPU
    AMD VM: at a load average of 4, ``test.py`` on 20 scenes took 26–28 s spinning and 16 s waiting
    passively (RX 5.4 → 1.4 s), and a run that started spinning on a quiet machine took 107 s
    instead of 21 s when other work arrived; on the quiet machine 8 scenes' networks took 0.71 s
    spinning and 0.81 s passive, their RX 0.35 s and 0.24 s (the same in total). An explicit setting
    of the user's, or torch already loaded, is left alone. Returns the policy set, or None. Waiting
    never changes a result."""
    import sys

    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or any(name in environ for name in _WAIT_SETTINGS):
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"


# --------------------------------------------------------------------------- measured once, cached


def cache_path() -> Path | None:
    override = os.environ.get(CACHE_ENV)
    if override:
        return None if override == "off" else Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fers" / "tuning.json"


def _machine_key() -> str:
    import torch

    return f"{machine()['cpu']}|{machine()['cores']} cores|torch {torch.__version__}"


@functools.lru_cache(maxsize=None)
def cached() -> dict:
    """The measured values for this machine, if ``--calibrate`` cached some (else ``{}``)."""
    path = cache_path()
    if path is None or not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get(_machine_key(), {}))
    except (OSError, ValueError, AttributeError):
        return {}


def calibrate(rounds: int = 7) -> dict:
    """Measure the knobs that no cache size decides (the covariance blocking threshold) and cache
    the winners for this machine; returns them."""
    import statistics
    import time

    import torch

    from .rx import _gram

    def best_time(function) -> float:
        function()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    threshold = None
    for channels in (64, 96, 128, 160, 200, 256):
        rows = torch.randn(1, channels, 4096, dtype=torch.float64)
        plain = best_time(lambda: _gram(rows, channels + 1))
        blocked = best_time(lambda: _gram(rows, 1))
        if blocked < plain and threshold is None:
            threshold = channels
        elif blocked >= plain:
            threshold = None  # blocking must win from the threshold on
    values = {"gram_blocked_min_channels": threshold or 1 << 30}
    path = cache_path()
    if path is not None:
        try:
            stored = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            stored = {}
        stored[_machine_key()] = values
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2) + "\n")
    cached.cache_clear()
    return values


def chosen() -> dict:
    """Every value the rules choose on this machine (what ``python -m fers.tuning`` prints)."""
    return {"machine": machine(), "threads": _threads(), "rx_scenes_per_solve_64x64x200": rx_scenes_per_solve(4096, 200),
            "network_chunk": network_chunk(), "pipeline_chunk": pipeline_chunk(),
            "scaling_block_values": scaling_block_values(),
            "gram_blocked_min_channels": gram_blocked_min_channels(), "cache_file": str(cache_path())}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fers.tuning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true", help="measure the covariance blocking threshold and "
                        "cache it for this machine")
    args = parser.parse_args(argv)
    from .utils import default_threads

    default_threads()
    if args.calibrate:
        print(f"measured: {calibrate()}")
    print(json.dumps(chosen(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
