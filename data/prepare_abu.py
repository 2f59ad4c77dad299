"""Convert ABU .mat files to the FERS_ABU layout: ``python data/prepare_abu.py --abu_dir FOLDER``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.data import prepare_abu_main  # noqa: E402

if __name__ == "__main__":
    prepare_abu_main()
