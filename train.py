"""Train FERS: ``python train.py --stage 1|2|all --input_channel 50``. See ``--help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fers.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main()
