"""The per-epoch test-set metric of the reference's model selection (``--select_on_test``,
``--log_test_auc``), with the test set read, validated and normalised once per run.

The reference evaluates every epoch on the HAD100 test set ``test/aviris_ng`` (D7), first C bands:
stage 1 scores ``RX(x + p1)`` in NumPy float64 at every band count (D6); stage 2 scores with the
FERS fusion, ``N(RX(x + spa)) · N(RX(x + spe))`` with float32 RX at 50 bands or fewer, float64
``RX(x + spa + spe)`` above. The mean AUC over the scenes is the metric; the first epoch with a
strictly better mean is kept.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from .detectors import resolve_fusion, resolve_rx_precision
from .metrics import auc, mean_ignoring_nan
from .preprocessing import to_chw

# RX precision of the selection metric by stage: stage 1 float64 everywhere (FERD utils/RX.py),
# stage 2 the FERS rule ("reference": float32 at <= 50 bands, float64 above).
SELECTION_RX_PRECISION = {"stage1": "float64", "stage2": "reference"}


class TestSelectionSet:
    """The test scenes of one run, loaded once: normalised cubes grouped by shape, and masks.

    ``scenes``: :class:`fers.datasets.Scene` list (``had100_manifest``); every scene is read,
    validated and cut to its first ``channels`` bands here, never again during training.
    """

    def __init__(self, scenes, channels: int, log=None):
        from .evaluation import load_inputs

        log = log or logging.getLogger("fers.training").info
        self.channels = channels
        self.names = [scene.name for scene in scenes]
        cubes, self.masks, _ = load_inputs(scenes, channels, "first", log)
        self.groups = {}  # shape → (scene indices, tensor (n, C, H, W))
        for index, cube in enumerate(cubes):
            self.groups.setdefault(cube.shape, []).append(index)
        self.groups = {shape: (indices, torch.from_numpy(np.stack([to_chw(cubes[i]) for i in indices])))
                       for shape, indices in self.groups.items()}

    def __len__(self) -> int:
        return len(self.names)

    def scene_aucs(self, stage_name: str, fen, spatial=None, device="cpu", batch_size: int = 16) -> list[float]:
        """Per-scene AUC of the reference's selection metric for ``stage_name`` with the given
        networks (eval mode is the caller's business)."""
        from .evaluation import Detector

        precision = SELECTION_RX_PRECISION[stage_name]
        detector = Detector(self.channels, fen=fen, spatial=spatial, device=device, fusion="auto",
                            rx_precision=precision)
        aucs = [float("nan")] * len(self.names)
        for indices, cubes in self.groups.values():
            for start in range(0, len(indices), batch_size):
                maps = detector.score(cubes[start:start + batch_size]).double().cpu().numpy()
                for slot, index in enumerate(indices[start:start + batch_size]):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        aucs[index] = auc(maps[slot], self.masks[index])
        return aucs

    def mean_auc(self, stage_name: str, fen, spatial=None, device="cpu") -> float:
        """Mean over the scenes with a defined AUC."""
        return mean_ignoring_nan(self.scene_aucs(stage_name, fen, spatial, device))[0]

    @staticmethod
    def describe(stage_name: str, channels: int) -> dict:
        precision = resolve_rx_precision(SELECTION_RX_PRECISION[stage_name], channels)
        described = {"rx_precision": precision}
        if stage_name == "stage2":
            described["fusion"] = resolve_fusion("auto", channels)
        return described
