"""Compare GRX, LRX, FERD and FERS on a dataset folder: ``python compare.py --data_path DIR``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fers.cli.compare import main  # noqa: E402
from fers.errors import run_command  # noqa: E402

if __name__ == "__main__":
    run_command(main)  # exits without the interpreter's teardown
