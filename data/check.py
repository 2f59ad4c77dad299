"""Validate a HAD100 / FERS_ABU / ABU folder: ``python data/check.py PATH``; exit code 2 on problems. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.data import check_main  # noqa: E402

if __name__ == "__main__":
    check_main()
