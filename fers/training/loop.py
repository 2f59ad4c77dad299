"""The training loop shared by stage 1 (FERD) and stage 2 (FERS): batching, the optimiser, model
selection, the per-epoch state, the divergence check.

Model selection: ``last`` (default) exports the final epoch; ``val_loss`` the epoch with the lowest
loss on held-out training crops; ``test_auc`` (``--select_on_test``) the epoch with the best mean
AUC on the HAD100 test set, as the reference does (selection on test labels, recorded as such),
with the reference's metric (:mod:`fers.selection`). ``--protocol reference`` turns on every
reference behaviour at once (:mod:`fers.reference`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import atomic_torch_save, model_card
from ..errors import FersError, ParameterError
from ..reference import DEFAULT_SEED
from ..outputs import write_text
from ..reference import check_run_state_layout, end_of_epoch_draws, epoch_permutation
from ..training_data import TrainingData, split_held_out
from ..utils import versions
from .config import DEFAULTS, SELECTIONS, TrainConfig
from .distributed import Distributed
from .run_folder import (LOG_FILE, STATE_FILE, SignalStopper, TrainingInterrupted, load_frozen, restore_rng_states,
                         rng_states, save_frozen, write_errors)
from .stages import cpu_state

logger = logging.getLogger("fers.training")
# An epoch whose training or held-out loss is not finite, or more than this factor above the lowest
# (positive) value of the earlier epochs, is flagged as diverging (log.jsonl and a console warning).
DIVERGENCE_FACTOR = 10.0


def divergence(record: dict, history: list, factor: float = DIVERGENCE_FACTOR) -> str | None:
    """Why the epoch of ``record`` looks like a diverging run, or None.

    Checked for the training loss (``loss``) and the held-out loss (``val_loss``, when computed): the
    value is not finite, or it is more than ``factor`` × the lowest positive value of the earlier
    epochs in ``history``."""
    reasons = []
    for key in ("loss", "val_loss"):
        if key not in record:
            continue
        value = record[key]
        if not math.isfinite(value):
            reasons.append(f"{key} is {value}")
            continue
        earlier = [(r[key], r["epoch"]) for r in history if key in r and math.isfinite(r[key])]
        if earlier:
            best, epoch = min(earlier)
            if best > 0 and value > factor * best:
                ratio = value / best
                shown = f"{ratio:.0f}" if ratio < 1e6 else f"{ratio:.2g}"
                reasons.append(f"{key} {value:.4g} is {shown}× its lowest so far ({best:.4g}, epoch {epoch})")
    return "; ".join(reasons) or None


@dataclass
class TrainingOptions:
    """What :func:`fit` uses of a :class:`TrainConfig`, with the protocol-resolved settings."""

    epochs: int = DEFAULTS.epochs
    batch_size: int = DEFAULTS.batch_size
    lr: float = DEFAULTS.lr
    betas: tuple = DEFAULTS.betas
    seed: int = DEFAULT_SEED
    selection: str = "last"  # one of SELECTIONS
    val_fraction: float = DEFAULTS.val_fraction
    log_test_auc: bool = DEFAULTS.log_test_auc
    progress: bool = not DEFAULTS.no_progress
    data_order: str = "seeded"  # seeded | reference (the reference's shuffling DataLoader)
    amp: bool = False  # autocast on a CUDA device (fers.training.config: amp)
    protocol: dict | None = None  # resolved settings (fers.reference.resolve_protocol), recorded

    @classmethod
    def from_config(cls, config: TrainConfig, settings: dict) -> TrainingOptions:
        """``config`` with the ``settings`` of :func:`fers.reference.resolve_protocol`."""
        return cls(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, betas=tuple(config.betas),
                   seed=settings["seed"], selection=settings["selection"], val_fraction=config.val_fraction,
                   log_test_auc=config.log_test_auc, progress=not config.no_progress,
                   data_order=settings["data_order"], protocol=settings, amp=config.amp)


def _batches(indices: np.ndarray, batch_size: int, world_size: int):
    """Global batches of ``batch_size``; a last batch smaller than the number of processes is dropped
    (DDP needs every process to take part in every step)."""
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        if len(batch) >= world_size:
            yield batch


# The training crops go to a GPU once when they take at most this share of its free memory: each
# batch is then gathered there instead of in host memory and copied every step.
DEVICE_DATA_SHARE = 0.25


def _batch_source(crops: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Where batches are gathered from: the crops on the GPU when they fit (see
    :data:`DEVICE_DATA_SHARE`), else in host memory (always on the CPU). Same values either way."""
    if device.type != "cuda":
        return crops
    free, _ = torch.cuda.mem_get_info(device)
    if crops.numel() * crops.element_size() > DEVICE_DATA_SHARE * free:
        logger.info(f"training crops ({crops.numel() * crops.element_size() / 2 ** 30:.1f} GiB) stay in host "
                    "memory (more than a quarter of the GPU's free memory): each batch is copied per step")
        return crops
    return crops.to(device)


class MixedPrecision:
    """Autocast for the training forward pass and loss on a CUDA device, with a gradient scaler for
    float16 (bfloat16 needs none); off: plain float32 steps."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled and device.type == "cuda"
        self.dtype = None
        self.scaler = None
        if self.enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self.device_type = device.type

    def autocast(self):
        import contextlib

        return torch.autocast(self.device_type, dtype=self.dtype) if self.enabled else contextlib.nullcontext()

    def step(self, total: torch.Tensor, optimizer) -> None:
        if self.scaler is None:
            total.backward()
            optimizer.step()
        else:
            self.scaler.scale(total).backward()
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _mean_loss(stage, crops: torch.Tensor, indices: np.ndarray, batch_size: int, device) -> float:
    """Total loss over ``indices`` with the networks in eval mode (label-free selection)."""
    stage.eval_mode()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            loss, _ = stage.loss(crops[batch].to(device), training=False)
            total += loss.item() * len(batch)
            count += len(batch)
    return total / count


def _test_auc(stage, test_set, device) -> float:
    """The reference's selection metric on the test set loaded once (:class:`fers.selection.TestSelectionSet`)."""
    stage.eval_mode()
    modules = stage.detector_modules()
    return float(test_set.mean_auc(stage.name, modules["fen"], modules["spatial"], device))


def fit(stage, data: TrainingData, options: TrainingOptions, run_dir, dist: Distributed,
        checkpoint_dir=None, state: dict | None = None, test_scenes=None, log=None) -> dict:
    """Train ``stage`` on ``data``; save the state after every epoch; export the selected weights to
    ``checkpoint_dir``. Returns a summary (selected epoch, metric, export folder). ``log``: where the
    resume line goes (default: the ``fers.training`` logger, like the epoch lines and warnings)."""
    if options.selection not in SELECTIONS:
        raise ParameterError(f"`selection` {options.selection}: choose one of {', '.join(SELECTIONS)}")
    run_dir = Path(run_dir)
    device = dist.device
    crops = _batch_source(torch.from_numpy(data.crops), device)
    precision = MixedPrecision(options.amp, device)
    if options.selection == "val_loss":
        train_indices, held_out = split_held_out(len(crops), options.val_fraction, options.seed)
    else:
        train_indices, held_out = np.arange(len(crops)), np.array([], dtype=np.int64)
    if options.selection == "test_auc" or options.log_test_auc:
        if not test_scenes:
            raise FersError("`select_on_test` / `log_test_auc` need the HAD100 test set "
                            "(test/<sensor>/ under `data_path`)")
    if options.batch_size % dist.world_size:
        raise ParameterError(f"`batch_size` {options.batch_size} is the global batch: it must be divisible by the "
                        f"{dist.world_size} processes")

    optimizer = torch.optim.Adam(stage.trainable_parameters(), lr=options.lr, betas=tuple(options.betas))
    order = torch.Generator().manual_seed(options.seed)
    start_epoch, history, best = 0, [], None
    frozen_sha256 = state.get("frozen_sha256") if state is not None else None
    if state is not None:
        check_run_state_layout(state)
        frozen = load_frozen(run_dir, frozen_sha256) if frozen_sha256 else {}
        for name, module in stage.modules().items():  # older state files hold every entry
            module.load_state_dict({**frozen.get(name, {}), **state["modules"][name]})
        optimizer.load_state_dict(state["optimizer"])
        precision.load_state_dict(state.get("grad_scaler"))
        restore_rng_states(state["rng"], order)
        start_epoch, history, best = state["epoch"], list(state["history"]), state.get("best")
        if dist.is_main:
            (log or logger.info)(f"resuming {run_dir} after epoch {start_epoch} of {options.epochs}")
    frozen_keys = stage.frozen_keys()
    if frozen_sha256 is None and dist.is_main:
        frozen_sha256 = save_frozen(run_dir, stage)  # once: these entries never change
    stage.wrap(dist.wrapper())

    steps_per_epoch = len(list(_batches(train_indices, options.batch_size, dist.world_size)))
    from tqdm import tqdm

    bar = tqdm(total=options.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="step",
               desc=f"{stage.name} ({stage.channels} bands)", disable=not (options.progress and dist.is_main),
               dynamic_ncols=True)
    with SignalStopper() as stopper:
        for epoch in range(start_epoch, options.epochs):
            tick = time.perf_counter()
            stage.train_mode()
            permutation = train_indices[epoch_permutation(options.data_order, len(train_indices), order)]
            sums = {name: 0.0 for name in ("loss", *stage.weights)}
            seen = 0
            for batch in _batches(permutation, options.batch_size, dist.world_size):
                if stopper.signum is not None:
                    raise TrainingInterrupted(stopper.signum, run_dir, epoch)
                local = batch[dist.rank::dist.world_size]
                x = crops[local].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    total, terms = stage.loss(x)
                precision.step(total, optimizer)
                sums["loss"] += total.item() * len(local)
                for name, value in terms.items():
                    sums[name] += value.item() * len(local)
                seen += len(local)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total.item():.4f}")
            totals = dist.all_sum([*sums.values(), float(seen)])
            record = {"epoch": epoch + 1, **{k: v / totals[-1] for k, v in zip(sums, totals)},
                      "seconds": time.perf_counter() - tick}
            end_of_epoch_draws(options.data_order)  # the reference's per-epoch test loader (every process)
            if dist.is_main:
                metric = None
                if options.selection == "val_loss":
                    record["val_loss"] = metric = _mean_loss(stage, crops, held_out, options.batch_size, device)
                if options.selection == "test_auc" or options.log_test_auc:
                    record["test_auc"] = _test_auc(stage, test_scenes, device)
                    if options.selection == "test_auc":
                        metric = -record["test_auc"]
                # a non-finite metric (a diverged epoch) is never selected
                if metric is not None and math.isfinite(metric) and (best is None or metric < best["metric"]):
                    best = {"epoch": epoch + 1, "metric": metric, "state": stage.selected_state()}
                record["selected"] = best["epoch"] if best is not None else epoch + 1
                record["selection"] = options.selection  # "test_auc" = chosen on test labels (reference)
                reason = divergence(record, history)
                record["diverging"] = reason is not None
                if reason:
                    record["divergence"] = reason
                history.append(record)
                payload = {"epoch": epoch + 1, "history": history, "best": best,
                           "modules": {name: cpu_state(m, frozen_keys.get(name, ()))
                                       for name, m in stage.modules().items()},
                           "frozen_sha256": frozen_sha256,
                           "optimizer": optimizer.state_dict(), "rng": rng_states(order)}
                if precision.scaler is not None:
                    payload["grad_scaler"] = precision.state_dict()
                with write_errors(run_dir, "`run_dir`", f" and continue with `resume` {run_dir},"):
                    atomic_torch_save(run_dir / STATE_FILE, payload)
                    write_text(run_dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in history))
                logger.info(_epoch_line(record, options.epochs))
                if reason:
                    logger.warning(f"{stage.name} epoch {epoch + 1}: {reason}: the run is diverging "
                                   f"(rule: not finite or over {DIVERGENCE_FACTOR:g}× the lowest so far); "
                                   "try a smaller `lr`")
            dist.barrier()
        if stopper.signum is not None:
            raise TrainingInterrupted(stopper.signum, run_dir, options.epochs)
    bar.close()

    summary = {"epochs": options.epochs, "selection": options.selection}
    if dist.is_main:
        if best is not None and options.selection != "last":
            stage.load_selected(best["state"])
            summary.update(selected_epoch=best["epoch"], selected_metric=abs(best["metric"]))
        else:
            summary["selected_epoch"] = options.epochs
        if checkpoint_dir is not None:
            info = {"stage": stage.name, "run_dir": str(run_dir), "epoch": summary["selected_epoch"],
                    "epochs": options.epochs, "selection": options.selection,
                    "selection_uses_test_labels": options.selection == "test_auc", "seed": options.seed,
                    "data_order": options.data_order, "protocol": options.protocol, **stage.describe()}
            card = model_card(info, stage.channels, data, versions())
            summary["checkpoint_folder"] = str(stage.export(checkpoint_dir, info, card))
    dist.barrier()
    return summary


def _epoch_line(record: dict, epochs: int) -> str:
    terms = " ".join(f"{k}={v:.4f}" for k, v in record.items()
                     if k not in ("epoch", "seconds", "selected") and isinstance(v, float))
    return f"epoch {record['epoch']}/{epochs}: {terms} ({record['seconds']:.1f} s)"
