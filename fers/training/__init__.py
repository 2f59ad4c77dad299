"""Training of stage 1 (FERD) and stage 2 (FERS), as a package.

- :mod:`.api`: :func:`train`, both stages as ``train.py`` runs them;
- :mod:`.config`: :class:`TrainConfig`, every setting and its default once;
- :mod:`.stages`: the two stages behind one interface (:class:`Stage`);
- :mod:`.loop`: :func:`fit`, the loop both stages share (batches, selection, divergence);
- :mod:`.run_folder`: the run folder (config.json, log.jsonl, state.pt, frozen.pt), RNG states, signals,
  the rules of resuming a run;
- :mod:`.distributed`: a single device or DistributedDataParallel under ``torchrun``.
"""

from .api import protocol_settings, train, train_stage
from .config import REFERENCE, SELECTIONS, TrainConfig
from .distributed import Distributed, setup_distributed, shutdown_distributed
from .loop import DIVERGENCE_FACTOR, TrainingOptions, divergence, fit
from .run_folder import (CONFIG_FILE, FROZEN_FILE, LOG_FILE, STATE_FILE, SignalStopper, TrainingInterrupted,
                         default_run_dir, load_frozen, load_run_state, prepare_run_dir, read_run_config,
                         restore_rng_states, rng_states, run_config, save_frozen, write_errors, write_run_config)
from .stages import SPATIAL_BN_MODES, RebelliousStudent, Stage, Stage1, Stage2, load_stage1_for_stage2

__all__ = [
    "CONFIG_FILE", "DIVERGENCE_FACTOR", "Distributed", "FROZEN_FILE", "LOG_FILE", "REFERENCE", "RebelliousStudent",
    "SELECTIONS", "SPATIAL_BN_MODES", "STATE_FILE", "SignalStopper", "Stage", "Stage1", "Stage2", "TrainConfig",
    "TrainingInterrupted", "TrainingOptions", "default_run_dir", "divergence", "fit", "load_frozen", "load_run_state",
    "load_stage1_for_stage2", "prepare_run_dir", "read_run_config", "restore_rng_states", "rng_states", "run_config",
    "protocol_settings", "save_frozen", "setup_distributed", "shutdown_distributed", "train", "train_stage",
    "write_errors", "write_run_config",
]
