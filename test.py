"""Evaluate FERS on HAD100: ``python test.py --input_channel 50``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fers.cli.evaluate import had100_main  # noqa: E402
from fers.errors import run_command  # noqa: E402

if __name__ == "__main__":
    run_command(had100_main)  # exits without the interpreter's teardown
