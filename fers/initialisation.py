"""The reference releases' explicit initialisation of every trained module.

The reference sets these schemes itself; torch's defaults differ from them by factors of 0.2 to 4
in standard deviation (see ``../shared/reference/training-reference.md``, "Initialisation"):

- stage 1 (FERD ``models/resnet.py:44-54``, ``:469-474``, ``models/de_resnet.py:216-221``):
  ``xavier_normal_`` on ConvH, the pixel classifier (biases 0) and the reconstruction head;
  ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` on every ``Conv2d`` of the one-class
  bottleneck and of the decoder, BatchNorm weight 1 and bias 0, ``ConvTranspose2d`` left at torch's
  default;
- stage 2 (FERS ``models/spa_branch.py:9-51``, applied with ``module.apply``): every ``Conv2d`` /
  ``Linear`` weight ``U(−0.1, 0.1)``, every bias ``U(−1/√fan_in, 1/√fan_in)``, BatchNorm 1 and 0.

Each function is applied by the module's constructor, as in the reference.
"""

from __future__ import annotations

import contextlib
import math
import threading

from torch import nn

UNIFORM_WEIGHT_BOUND = 0.1  # stage 2: weights U(−0.1, 0.1)


def xavier_normal_init(*convolutions: nn.Conv2d) -> None:
    """``xavier_normal_`` (gain 1: std ``√(2 / (fan_in + fan_out))``) on each weight, biases 0."""
    for conv in convolutions:
        nn.init.xavier_normal_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def kaiming_fan_out_init(module: nn.Module) -> None:
    """Every ``Conv2d`` in ``module``: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``
    (std ``√2 / √fan_out``); every BatchNorm / GroupNorm weight 1, bias 0; transposed convolutions
    keep torch's default. Visits ``module.modules()`` in order, as torchvision's ResNet does."""
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(child, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)


def _uniform_init(child: nn.Module) -> None:
    if isinstance(child, (nn.Conv2d, nn.Linear)):
        nn.init.uniform_(child.weight, -UNIFORM_WEIGHT_BOUND, UNIFORM_WEIGHT_BOUND)
        if child.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(child.weight)
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(child.bias, -bound, bound)
    elif isinstance(child, nn.BatchNorm2d):
        nn.init.ones_(child.weight)
        nn.init.zeros_(child.bias)


def uniform_init(module: nn.Module) -> None:
    """Stage 2: ``module.apply`` of weights ``U(−0.1, 0.1)``, biases ``U(±1/√fan_in)``, BatchNorm 1/0."""
    module.apply(_uniform_init)


# torch.nn.init functions that fill a tensor (what torch's layers and the functions above call)
_FILLING = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
            "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_SKIPPING: set = set()  # threads inside skipped_initialisation()


@contextlib.contextmanager
def skipped_initialisation():
    """Build networks without filling their weights, in this thread only, when a checkpoint then
    overwrites every parameter and buffer (strict loading): the initialisation of a ResNet-34
    spatial branch is 0.2 s of a command's start-up, thrown away by the load. Other threads keep
    initialising. The global random generator is not advanced either, so use it only where nothing
    after the load draws from it unseeded (the detection commands)."""
    thread = threading.get_ident()
    with _PATCH_LOCK:
        if not _SKIPPING:
            for name in _FILLING:
                original = getattr(nn.init, name)
                setattr(nn.init, name, _skipping(original))
        _SKIPPING.add(thread)
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _SKIPPING.discard(thread)
            if not _SKIPPING:
                for name in _FILLING:
                    setattr(nn.init, name, getattr(nn.init, name).original)


_PATCH_LOCK = threading.Lock()


def _skipping(original):
    def fill(tensor, *args, **kwargs):
        if threading.get_ident() in _SKIPPING:
            return tensor
        return original(tensor, *args, **kwargs)

    fill.original = original
    return fill
