"""The training protocol of the reference releases, as one switch (``--protocol reference``).

Facts from ``../shared/reference/training-reference.md``:

- seeds: stage 1 ``--seed 10`` (FERD ``train.py:32``); stage 2 (FERS ``utils/utils.py:89-98``)
  370 for 50 bands, 810 for 100, 820 for 200 (AVIRIS-NG), 850 for 200 bands AVIRIS-Classic; applied
  to Python, NumPy and torch (``seed_torch``);
- data order: ``DataLoader(shuffle=True)`` over the crops with the global torch generator, the last
  partial batch kept;
- the SFAM loss gets the classifier's sigmoid output (D1, ``--bce_input sigmoid``), the frozen
  ResNet-34 stays in train mode (``--spatial_bn train``), the epoch with the best mean test AUC is
  kept (``--select_on_test``), on ``test/aviris_ng`` whatever the training sensor (D7).

:func:`resolve_protocol` turns the command-line flags into the settings a run uses: a flag given
explicitly wins over the protocol.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import FersError, ParameterError

PROTOCOLS = ("default", "reference")
DATA_ORDERS = ("seeded", "reference")
DEFAULT_SEED = 0
STAGE1_REFERENCE_SEED = 10
# (channels, training sensor) → the reference's stage-2 seed; 50 and 100 bands exist for AVIRIS-NG only.
STAGE2_REFERENCE_SEEDS = {(50, "aviris_ng"): 370, (100, "aviris_ng"): 810, (200, "aviris_ng"): 820,
                          (200, "aviris"): 850}
REFERENCE_TEST_SENSOR = "aviris_ng"  # D7: the reference always tests on test/aviris_ng
# The reference reads the test set every epoch through a DataLoader whose iterator also draws a base
# seed from the global generator (torch's _BaseDataLoaderIter); reproduced in the reference order.
TEST_LOADER_DRAWS_PER_EPOCH = 1


def reference_seed(stage: str, channels: int, sensor: str = "aviris_ng") -> int | None:
    """The seed the reference uses for ``stage`` (``"stage1"``/``"stage2"``), or None when the reference
    has none for that band count and sensor."""
    if stage == "stage1":
        return STAGE1_REFERENCE_SEED
    if stage == "stage2":
        return STAGE2_REFERENCE_SEEDS.get((channels, sensor))
    raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")


def seed_like_reference(seed: int) -> None:
    """``seed_torch`` of the reference: Python, ``PYTHONHASHSEED``, NumPy, torch (CPU and every CUDA
    device) and deterministic cuDNN."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def resolve_protocol(stage: str, protocol: str, channels: int, sensor: str, *, seed=None, bce_input=None,
                     spatial_bn=None, selection=None, select_on_test: bool = False, data_order=None,
                     test_sensor=None) -> dict:
    """The settings of one stage's run. ``None`` (flag not given) takes the protocol's value; an
    explicit value wins. Returns a dict recorded in ``config.json`` and the checkpoints."""
    if protocol not in PROTOCOLS:
        raise ParameterError(f"`protocol` {protocol}: choose one of {', '.join(PROTOCOLS)}")
    reference = protocol == "reference"
    notes = []
    if seed is None:
        seed = reference_seed(stage, channels, sensor) if reference else DEFAULT_SEED
        seed_source = "reference" if reference else "default"
        if seed is None:
            seed, seed_source = DEFAULT_SEED, "default"
            notes.append(f"the reference has no stage-2 seed for {channels} bands of {sensor}; "
                         f"seed {DEFAULT_SEED} used")
    else:
        seed_source = "--seed"
    if select_on_test:
        selection = "test_auc"
    elif selection is None:
        selection = "test_auc" if reference else "last"
    settings = {
        "protocol": protocol,
        "seed": int(seed),
        "seed_source": seed_source,
        "data_order": data_order or ("reference" if reference else "seeded"),
        "selection": selection,
        "test_sensor": test_sensor or REFERENCE_TEST_SENSOR,
        "selection_metric": ("mean AUC of float64 RX(x + p1) over the test scenes, first C bands" if stage == "stage1"
                             else "mean AUC of the FERS fusion (product of float32 RX maps at <= 50 bands, "
                                  "float64 RX of x + spa + spe above) over the test scenes, first C bands"),
        "notes": notes,
    }
    if stage == "stage1":
        settings["bce_input"] = bce_input or ("sigmoid" if reference else "logits")
    else:
        settings["spatial_bn"] = spatial_bn or ("train" if reference else "eval")
    return settings


def seed_run(settings: dict) -> None:
    """Seed a run as its protocol says (the reference's ``seed_torch`` in reference mode)."""
    if settings["protocol"] == "reference":
        seed_like_reference(settings["seed"])
    else:
        from .utils import seed_everything

        seed_everything(settings["seed"])


# --------------------------------------------------------------------------- data order


def _global_int64() -> int:
    """One draw from the global torch generator, as ``torch.empty((), dtype=torch.int64).random_()``."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def dataloader_permutation(count: int) -> torch.Tensor:
    """The order in which ``DataLoader(dataset, shuffle=True)`` (no generator given) visits ``count``
    items in one epoch, drawing from the global torch generator exactly as it does: the iterator's
    base seed first (``_BaseDataLoaderIter``), then ``RandomSampler``'s seed, then
    ``torch.randperm(count)`` on a generator seeded with it."""
    _global_int64()  # the iterator's base seed (worker seeding)
    seed = _global_int64()
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def epoch_permutation(data_order: str, count: int, generator: torch.Generator) -> np.ndarray:
    """Indices ``0..count−1`` in this epoch's order: ``seeded`` draws from the run's own generator
    (independent of initialisation), ``reference`` as the reference's shuffling DataLoader."""
    if data_order == "reference":
        return dataloader_permutation(count).numpy()
    if data_order == "seeded":
        return torch.randperm(count, generator=generator).numpy()
    raise ParameterError(f"`data_order` {data_order}: choose one of {', '.join(DATA_ORDERS)}")


def end_of_epoch_draws(data_order: str) -> None:
    """The reference's per-epoch test DataLoader iterator draws its base seed from the global
    generator; reproduced in the reference order so later epochs' orders follow the same stream."""
    if data_order == "reference":
        for _ in range(TEST_LOADER_DRAWS_PER_EPOCH):
            _global_int64()


# --------------------------------------------------------------------------- older run states

LEGACY_BIAS_KEYS = ("reconstruction_head.bias",)


def check_run_state_layout(state: dict) -> None:
    """A run state written before the heads lost the biases the reference does not have (D2, D5)
    cannot be continued exactly: say so instead of failing inside ``load_state_dict``."""
    for name, module_state in state.get("modules", {}).items():
        legacy = [k for k in module_state if k in LEGACY_BIAS_KEYS
                  or (k.startswith("restoration.") and k.endswith((".fc.1.bias", ".fc.3.bias")))]
        if legacy:
            raise FersError(f"the run state was written by an older version whose {name} has biases the reference "
                            f"network does not have ({legacy[0]}, ...); it cannot be continued exactly; "
                            "start a new run")
