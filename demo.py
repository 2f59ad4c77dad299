"""The whole method end to end on synthetic data, CPU only, no download: ``python demo.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fers.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
