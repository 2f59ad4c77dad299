"""Stage 1 (FERD): ``cd train_FERD && python train.py --input_channel 50``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fers.cli.train import stage1_main  # noqa: E402

if __name__ == "__main__":
    stage1_main()
