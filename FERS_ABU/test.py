"""Evaluate FERS on ABU: ``cd FERS_ABU && python test.py --detect RX``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.evaluate import abu_main  # noqa: E402
from fers.errors import run_command  # noqa: E402

if __name__ == "__main__":
    run_command(abu_main)  # exits without the interpreter's teardown
