"""Every training setting and its default, once: :class:`TrainConfig`.

The command lines generate their flags from its fields (same names; ``help``, ``choices`` and the
stages a flag applies to are field metadata), ``config.json`` stores it under ``args`` and
``--resume`` reads it back. ``None`` means "not given": :func:`fers.reference.resolve_protocol`
fills in the value of the chosen ``protocol``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..backbones import ARCHITECTURES
from ..errors import ParameterError
from ..fen import REFERENCE_BACKBONE
from ..losses import BCE_INPUTS
from ..reference import DATA_ORDERS, PROTOCOLS, REFERENCE_TEST_SENSOR
from ..training_data import CROP_MODES, HAD100_TRAIN_SENSORS
from ..utils import DEVICES, REPO_ROOT
from .stages import SPATIAL_BN_MODES

STAGE_CHOICES = ("1", "2", "all")
STAGES = {"1": "stage1", "2": "stage2"}
# Every value ``selection`` accepts: test_auc is what --select_on_test selects.
SELECTIONS = ("last", "val_loss", "test_auc")
BOTH = ("stage1", "stage2")
REFERENCE_BETAS = (0.5, 0.999)


def setting(default, help: str, *, choices=None, type=None, stages=BOTH, cli: bool = True, metavar=None,
            main_only: bool = False):
    """A :class:`TrainConfig` field: its default, its help text (``%(default)s`` allowed) and how the
    command line shows it (``stages`` it applies to; ``cli=False``: library only; ``main_only``: only
    the top-level ``train.py``)."""
    metadata = {"help": help, "choices": choices, "type": type, "stages": stages, "cli": cli,
                "metavar": metavar, "main_only": main_only}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """The settings of a training run (both stages); field names are the ``train.py`` flags."""

    stage: str = setting("2", "1, 2 (default) or all = stage 1 then stage 2 with one command",
                         choices=STAGE_CHOICES, main_only=True)
    input_channel: int = setting(50, "bands C the model takes: the first C bands of every scene (reference models: "
                                     "50, 100, 200; default %(default)s)")
    data_path: str = setting(str(REPO_ROOT / "data" / "HAD100Dataset"),
                             "HAD100 root (training scenes in train/<sensor>/*.npy) or any folder of .mat/.npy/.npz "
                             "scenes (default: %(default)s)")
    sensor: str = setting("aviris_ng", "HAD100 training sensor folder (default %(default)s)",
                          choices=HAD100_TRAIN_SENSORS)
    checkpoint_dir: str = setting(str(REPO_ROOT / "checkpoints"),
                                  "parent folder of <C>bands/: stage 1 writes convh.pt, enc.pt, pc.pt there, stage 2 "
                                  "reads them and writes spa_fen.pt and restoration.pt (default: %(default)s)")
    device: str = setting("auto", "auto = CUDA if available, else CPU (default %(default)s)", choices=DEVICES)
    amp: bool = setting(False, "mixed precision on a CUDA device: the forward passes and losses under autocast "
                               "(bfloat16, or float16 with loss scaling where the GPU lacks bfloat16); off by default "
                               "(float32, as the reference); refused on the CPU")
    epochs: int = setting(60, "epochs (reference: %(default)s)")
    batch_size: int = setting(16, "crops per step, summed over all processes under torchrun (reference: %(default)s)")
    img_size: int = setting(64, "crop size, a multiple of 8 (reference: %(default)s)")
    lr: float = setting(0.005, f"Adam learning rate (reference: %(default)s, betas {REFERENCE_BETAS})")
    betas: tuple = setting(REFERENCE_BETAS, "Adam betas (reference)", cli=False)
    protocol: str = setting("default", "reference: every behaviour of the reference release at once (sigmoid BCE "
                                       "input, ResNet-34 BN in train mode, selection on the test AUC, the reference's "
                                       "seeds and data order); a flag given explicitly still wins. default: this "
                                       "project's defaults (see docs/training.md). Recorded in config.json and the "
                                       "checkpoints", choices=PROTOCOLS)
    seed: int | None = setting(None, "seed of initialisation, crops and data order (default 0; --protocol reference: "
                                     "the reference's seeds, 10 for stage 1 and 370/810/820/850 for stage 2 by band "
                                     "count and sensor)", type=int)
    data_order: str | None = setting(None, "seeded: each epoch's order from a generator of its own, seeded by --seed "
                                           "(default); reference: the order of the reference's "
                                           "DataLoader(shuffle=True), drawn from the global torch generator (default "
                                           "with --protocol reference)", choices=DATA_ORDERS)
    backbone: str = setting(REFERENCE_BACKBONE, "stage-1 ImageNet teacher (reference: %(default)s; resnet18 or "
                                                "wide_resnet50_2 for quick CPU runs); the FEN records it so test.py "
                                                "rebuilds the same network",
                            choices=tuple(sorted(ARCHITECTURES)), stages=("stage1",))
    bce_input: str | None = setting(None, "logits (default): the classifier's logits conv3(|p2 - p1|) into "
                                          "BCE-with-logits; sigmoid: the reference's sigmoid output fed into "
                                          "BCE-with-logits (default with --protocol reference)",
                                    choices=BCE_INPUTS, stages=("stage1",))
    backbone_weights: str | None = setting(None, "ImageNet weights: torchvision's .pth file, or a folder holding it "
                                                 "(use a folder for --stage all, which needs the teacher's and "
                                                 "ResNet-34's files); default: $FERS_WEIGHTS_DIR, the torch.hub cache, "
                                                 "then a hash-checked download")
    no_pretrained: bool = setting(False, "train from RANDOMLY initialised backbones (no ImageNet weights): for tests "
                                         "and offline trials only")
    spatial_bn: str | None = setting(None, "eval (default): the frozen ResNet-34 keeps its ImageNet BatchNorm "
                                           "statistics; train: the reference, whose statistics drift with the "
                                           "training data (default with --protocol reference)",
                                     choices=SPATIAL_BN_MODES, stages=("stage2",))
    crop: str = setting("tile", "tile (default): non-overlapping img_size tiles of every scene (the whole scene for "
                                "64×64 HAD100 cubes); random: crops at seeded random positions", choices=CROP_MODES)
    crops_per_scene: int | None = setting(None, "crops per scene with --crop random (default: as many as tiles fit)",
                                          type=int)
    selection: str | None = setting(None, "model selection: last epoch (default), lowest loss on held-out training "
                                          "crops (label-free), or test_auc (= --select_on_test); --protocol reference "
                                          "selects on the test AUC unless this is given", choices=SELECTIONS)
    val_fraction: float = setting(0.1, "share of training crops held out for --selection val_loss "
                                       "(default %(default)s)")
    select_on_test: bool = setting(False, "the reference's selection: keep the epoch with the best mean AUC on the "
                                          "HAD100 test set (uses test labels; recorded in config.json, log.jsonl and "
                                          "the checkpoints)")
    log_test_auc: bool = setting(False, "log the HAD100 test-set mean AUC every epoch without selecting on it")
    test_sensor: str = setting(REFERENCE_TEST_SENSOR, "HAD100 test folder test/<test_sensor> of --select_on_test / "
                                                      "--log_test_auc (default %(default)s, as the reference, also "
                                                      "when training on --sensor aviris)")
    wavelengths: str | None = setting(None, "file of the training scenes' band centres (nm, or µm below 100: .txt/.csv "
                                            "numbers, .json list, ENVI .hdr, .npy); the first C are recorded in the "
                                            "checkpoints so that detect.py --band_policy wavelength can resample other "
                                            "sensors' scenes to them (stage 2 default: those stage 1 recorded)")
    run_dir: str | None = setting(None, "run folder (default: runs/<stage>_<C>bands_<time>/)")
    resume: str | None = setting(None, "continue the run in RUN_DIR from its last completed epoch with its recorded "
                                       "settings; --device, --workers, --no_progress may change, --epochs N "
                                       "continues to N epochs, --data_path may name a moved copy of the same files, "
                                       "--checkpoint_dir another export folder; any other flag that differs from the "
                                       "recorded value is refused", metavar="RUN_DIR")
    workers: int = setting(2, "threads reading the training scenes (default %(default)s)")
    no_progress: bool = setting(False, "no progress bar")

    def __post_init__(self):
        if isinstance(self.stage, int):
            self.stage = str(self.stage)
        self.betas = tuple(self.betas)

    @property
    def stages(self) -> list[str]:
        """``["stage1"]``, ``["stage2"]`` or both, in training order."""
        return list(STAGES.values()) if self.stage == "all" else [STAGES[self.stage]]

    def validate(self) -> TrainConfig:
        """Refuse values no run accepts, naming the parameter (a :class:`ParameterError`, a ValueError)."""
        for item in dataclasses.fields(self):
            value, choices = getattr(self, item.name), item.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ParameterError(f"`{item.name}` {value}: choose one of {', '.join(map(str, choices))}")
        for name in ("input_channel", "epochs", "batch_size", "img_size", "workers", "crops_per_scene"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ParameterError(f"`{name}` must be at least 1")
        if self.img_size % 8:
            raise ParameterError(f"`img_size` {self.img_size}: must be a multiple of 8")
        if not self.lr > 0:
            raise ParameterError("`lr` must be positive")
        if not 0 < self.val_fraction < 1:
            raise ParameterError("`val_fraction` must be between 0 and 1")
        return self

    def to_dict(self) -> dict:
        """What ``config.json`` records under ``args``."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from recorded or given values; unknown keys are ignored, missing ones take defaults."""
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


DEFAULTS = TrainConfig()
# The reference's training hyper-parameters (pinned by tests/test_losses.py).
REFERENCE = {name: getattr(DEFAULTS, name) for name in ("lr", "betas", "batch_size", "epochs", "img_size")}
