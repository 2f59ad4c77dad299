"""Stage 2 (FERS, the spatial branch): ``cd train_FERS && python train.py --input_channel 50``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.train import stage2_main  # noqa: E402

if __name__ == "__main__":
    stage2_main()
