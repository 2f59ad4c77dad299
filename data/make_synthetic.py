"""Write a synthetic HAD100-layout dataset: ``python data/make_synthetic.py --output OUT``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.data import make_synthetic_main  # noqa: E402

if __name__ == "__main__":
    make_synthetic_main()
