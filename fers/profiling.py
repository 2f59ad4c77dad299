"""Where a command's time goes, from process start to exit: ``FERS_PROFILE=profile.json python test.py ...``.

With the environment variable ``FERS_PROFILE`` set to a file path, every command (through
:func:`fers.errors.cli_entry`) writes a JSON profile there when it exits: the process's wall time
from its start (``/proc``) to exit, the time before the command's ``main`` began (``imports``:
interpreter, torch and the package), and the summed seconds and calls of each phase marked with
:func:`phase` (checkpoints, inference copies, reading and validating scenes, data-manifest hashing,
networks, RX, metrics, writing outputs), per thread (scenes are read on a reader thread while the
main thread computes, so phases of different threads overlap). Without the variable :func:`phase`
is a shared no-op context manager: nothing is timed or written.

This module imports nothing heavy: it is loaded before torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

PROFILE_ENV = "FERS_PROFILE"
PHASES = ("imports", "checkpoints", "inference_copies", "read_validate", "manifest_hash", "networks", "rx",
          "metrics", "write_outputs", "waiting_for_scenes")


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``, clock-tick resolution), None elsewhere."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class Profile:
    """Summed phase times per thread and the command's start and end (see the module docstring)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.local = threading.local()
        self.phases: dict = {}
        self.marks: dict = {}
        self.command = None
        self.main_started = None  # perf_counter at the command's main
        age = process_age_seconds()
        self.process_started = time.perf_counter() - age if age is not None else None

    @contextlib.contextmanager
    def phase(self, name: str, synchronise=None):
        """Add the block's wall time to phase ``name`` of the calling thread; a phase inside another
        counts only for itself (the outer one pauses), so a thread's phases add up to its time.
        ``synchronise``: a callable run before each clock read (waiting for a GPU's queued work)."""
        if synchronise is not None:
            synchronise()
        stack = self._stack()
        now = time.perf_counter()
        if stack:
            self._credit(stack[-1][0], now - stack[-1][1], calls=0)
        stack.append([name, now])
        try:
            yield
        finally:
            if synchronise is not None:
                synchronise()
            now = time.perf_counter()
            self._credit(name, now - stack.pop()[1], calls=1)
            if stack:
                stack[-1][1] = now

    def _stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def _credit(self, name: str, seconds: float, calls: int) -> None:
        key = (threading.current_thread().name, name)
        with self.lock:
            total, count = self.phases.get(key, (0.0, 0))
            self.phases[key] = (total + seconds, count + calls)

    def mark(self, name: str) -> None:
        """Record when ``name`` first happened (seconds since the process started)."""
        with self.lock:
            self.marks.setdefault(name, time.perf_counter())

    def start_command(self, command: str) -> None:
        self.command = command
        self.main_started = time.perf_counter()

    def payload(self) -> dict:
        ended = time.perf_counter()
        start = self.process_started
        main_started = self.main_started if self.main_started is not None else ended
        threads: dict = {}
        for (thread, name), (seconds, calls) in sorted(self.phases.items()):
            threads.setdefault(thread, {})[name] = {"seconds": seconds, "calls": calls}
        main_thread = threading.main_thread().name
        accounted = sum(v["seconds"] for v in threads.get(main_thread, {}).values())
        payload = {
            "command": self.command,
            "pid": os.getpid(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "wall_seconds": ended - start if start is not None else None,
            "imports_seconds": main_started - start if start is not None else None,
            "main_seconds": ended - main_started,
            "main_thread_other_seconds": (ended - main_started) - accounted,
            "marks": {name: (moment - start if start is not None else None) for name, moment in self.marks.items()},
            "phases": threads.get(main_thread, {}),
            "threads": {name: phases for name, phases in threads.items() if name != main_thread},
            "phase_names": list(PHASES),
        }
        return payload

    def write(self) -> None:
        """Write the profile (plain ``open``: this must work when the command failed, too)."""
        with open(self.path, "w") as handle:
            json.dump(self.payload(), handle, indent=2)
            handle.write("\n")


_ACTIVE: Profile | None = Profile(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else None
_NO_OP = contextlib.nullcontext()


def phase(name: str, device=None):
    """A context manager timing phase ``name`` when profiling (else a no-op). ``device``: a torch
    device whose queued work is waited for around the block when it is a GPU."""
    if _ACTIVE is None:
        return _NO_OP
    synchronise = None
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        def synchronise():
            torch.cuda.synchronize(device)
    return _ACTIVE.phase(name, synchronise)


def mark(name: str) -> None:
    """Record, when profiling, the first time ``name`` happens (e.g. ``first_batch``: the first
    scenes handed to the networks), as seconds since the process started."""
    if _ACTIVE is not None:
        _ACTIVE.mark(name)


def start_command(command: str) -> None:
    """Mark the start of a command's ``main`` (the end of the ``imports`` phase)."""
    if _ACTIVE is not None:
        _ACTIVE.start_command(command)


def finish_command() -> None:
    """Write the profile file, if profiling (the command's last step, also on errors)."""
    if _ACTIVE is not None:
        try:
            _ACTIVE.write()
        except OSError as error:  # a profile must never change how the command ends
            import sys

            print(f"warning: {PROFILE_ENV}={_ACTIVE.path}: cannot write the profile ({error})", file=sys.stderr)
