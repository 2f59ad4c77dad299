"""The training loop shared by stage 1 (FERD) and stage 2 (FERS).

One code path for a single device and for DistributedDataParallel under ``torchrun``. Each run
owns a folder::

    runs/<stage>_<C>bands_<time>/
        config.json   all arguments, seed, versions, data manifest, selection rule
        log.jsonl     one line per completed epoch: loss terms, seconds, held-out loss, test AUC, and
                      whether the epoch looks diverging (:func:`divergence`)
        state.pt      the weights that training changes, optimiser, epoch, RNG states, data order and
                      the selected weights, written atomically after every epoch (``--resume <run_dir>``
                      continues from it)
        frozen.pt     the weights that never change (frozen teacher / FEN / ResNet-34 and their eval-mode
                      BatchNorm buffers), written once; state.pt records its SHA-256

Model selection: ``last`` (default) exports the final epoch; ``val_loss`` the epoch with the lowest
loss on held-out training crops; ``test_auc`` (``--select_on_test``) the epoch with the best mean
AUC on the HAD100 test set, as the reference does (selection on test labels, recorded as such),
with the reference's metric (:mod:`fers.selection`). ``--protocol reference`` turns on every
reference behaviour at once (:mod:`fers.reference`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import ResNet, load_imagenet_weights
from .checkpoints import (RESTORATION_FILE, STAGE1_FILES, atomic_torch_save, band_folder, load_fen, save_fen,
                          save_spatial_branch, save_state)
from .errors import FersError
from .fen import FEN
from .io import OutputFolder, ensure_writable_dir, sha256_file, write_json, write_text
from .losses import BCE_INPUTS, STAGE1_WEIGHTS, STAGE2_WEIGHTS, stage1_loss, stage2_loss
from .reference import check_run_state_layout, end_of_epoch_draws, epoch_permutation
from .restoration import RestorationNetwork
from .reverse_distillation import FERDNetwork
from .spatial_branch import SPATIAL_BACKBONE, SpatialBranch
from .training_data import TrainingData, split_held_out
from .utils import REPO_ROOT, resolve_device, versions

# The reference's training hyper-parameters (pinned by tests/test_losses.py).
REFERENCE = {"lr": 0.005, "betas": (0.5, 0.999), "batch_size": 16, "epochs": 60, "img_size": 64}
SELECTIONS = ("last", "val_loss")
SPATIAL_BN_MODES = ("eval", "train")
STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
FROZEN_FILE = "frozen.pt"
# An epoch whose training or held-out loss is not finite, or more than this factor above the lowest
# (positive) value of the earlier epochs, is flagged as diverging (log.jsonl and a console warning).
DIVERGENCE_FACTOR = 10.0


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the last completed epoch's state is on disk."""

    def __init__(self, signum: int, run_dir: Path, epochs_done: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.run_dir = run_dir
        self.epochs_done = epochs_done


# --------------------------------------------------------------------------- writing


from .outputs import write_errors  # noqa: E402 (one write-error mapping, in fers.outputs)


# --------------------------------------------------------------------------- stages


def _cpu_state(module: nn.Module, skip=()) -> dict:
    """A CPU copy of ``module``'s state, without the entries named in ``skip``."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k not in skip}


def _load_over(module: nn.Module, state: dict) -> None:
    """Load ``state`` (possibly without the frozen entries) over ``module``'s current state, strictly:
    entries missing from ``state`` keep their (frozen, never changing) values."""
    full = module.state_dict()
    unknown = set(state) - set(full)
    if unknown:
        raise KeyError(f"state entries the network does not have, e.g. {sorted(unknown)[0]}")
    full.update(state)
    module.load_state_dict(full)


def _keys_under(module: nn.Module, submodules, parameters_only: bool = False) -> set:
    """State-dict keys of ``module`` that belong to ``submodules`` (only their parameters if asked)."""
    prefixes = tuple(f"{name}." for name, m in module.named_modules() if any(m is s for s in submodules))
    parameters = {name for name, _ in module.named_parameters()}
    return {k for k in module.state_dict() if k.startswith(prefixes) and (not parameters_only or k in parameters)}


class Stage1:
    """FERD: ImageNet teacher (frozen, eval) → bottleneck → decoder; ConvH, bottleneck, decoder,
    reconstruction head and SFAM classifier are trained. Exports the pruned FEN."""

    name = "stage1"
    weights = STAGE1_WEIGHTS

    def __init__(self, channels: int, backbone: str, device, bce_input: str = "logits",
                 backbone_weights=None, pretrained: bool = True, load_backbone: bool = True):
        if bce_input not in BCE_INPUTS:
            raise FersError(f"--bce_input {bce_input}: choose one of {', '.join(BCE_INPUTS)}")
        self.channels = channels
        self.backbone = backbone
        self.bce_input = bce_input
        self.net = FERDNetwork(channels, backbone)
        self.weights_source = "restored from the run's state"
        if load_backbone:
            teacher = ResNet(backbone, stages=3)
            self.weights_source = load_imagenet_weights(teacher, backbone_weights, pretrained)
            self.net.load_backbone_state(teacher.state_dict())
        self.net.freeze_teacher().to(device)
        self.forward_module = self.net

    def modules(self) -> dict:
        return {"net": self.net}

    def trainable_parameters(self):
        return self.net.trainable_parameters()

    def wrap(self, wrapper) -> None:
        self.forward_module = wrapper(self.net)

    def train_mode(self) -> None:
        self.net.train()  # FERDNetwork.train keeps the teacher in eval mode

    def eval_mode(self) -> None:
        self.net.eval()

    def loss(self, x, training: bool = True):
        outputs = (self.forward_module if training else self.net)(x)
        return stage1_loss(x, outputs, self.bce_input)

    def frozen_keys(self) -> dict:
        """Per entry of :meth:`modules`, the state keys that training never changes: the teacher's
        weights and BatchNorm buffers (always in eval mode)."""
        return {"net": _keys_under(self.net, self.net.frozen_modules())}

    def selected_state(self) -> dict:
        return {"fen": _cpu_state(self.net.fen, _keys_under(self.net.fen, [self.net.fen.encoder]))}

    def load_selected(self, state: dict) -> None:
        _load_over(self.net.fen, state["fen"])

    def detector_modules(self):
        return {"fen": self.net.fen, "spatial": None}

    def export(self, checkpoint_dir, training_info: dict) -> Path:
        """``convh.pt``, ``enc.pt``, ``pc.pt`` in ``<checkpoint_dir>/<C>bands/``; their config also
        records how the FEN was trained."""
        folder = band_folder(checkpoint_dir, self.channels)
        with OutputFolder(folder, "--checkpoint_dir", "the checkpoints") as staging:
            save_fen(staging, self.net.fen, training_info)
        return folder

    def describe(self) -> dict:
        return {"backbone": self.backbone, "bce_input": self.bce_input, "backbone_weights": self.weights_source}


class RebelliousStudent(nn.Module):
    """The trainable part of stage 2: spatial branch and restoration network.

    ``forward(x, spectral)`` → ``(spatial features, restored cube)``, all ``(N, C, H, W)``.
    """

    def __init__(self, spatial: SpatialBranch, restoration: RestorationNetwork):
        super().__init__()
        self.spatial = spatial
        self.restoration = restoration

    def forward(self, x, spectral):
        spatial = self.spatial(x)
        return spatial, self.restoration(spectral + spatial)


class Stage2:
    """FERS: frozen FEN (eval) gives the spectral features; the spatial branch (its ResNet-34
    frozen) and the restoration network are trained. Exports ``spa_fen.pt`` and ``restoration.pt``."""

    name = "stage2"
    weights = STAGE2_WEIGHTS

    def __init__(self, channels: int, fen: FEN, device, spatial_bn: str = "eval", backbone_weights=None,
                 pretrained: bool = True, load_backbone: bool = True):
        if spatial_bn not in SPATIAL_BN_MODES:
            raise FersError(f"--spatial_bn {spatial_bn}: choose one of {', '.join(SPATIAL_BN_MODES)}")
        self.channels = channels
        self.spatial_bn = spatial_bn
        self.fen = fen.to(device).eval().requires_grad_(False)
        spatial = SpatialBranch(channels, SPATIAL_BACKBONE)
        self.weights_source = "restored from the run's state"
        if load_backbone:
            resnet = ResNet(SPATIAL_BACKBONE, stages=3)
            self.weights_source = load_imagenet_weights(resnet, backbone_weights, pretrained)
            spatial.load_backbone_state(resnet.state_dict())
        spatial.freeze_backbone()
        self.student = RebelliousStudent(spatial, RestorationNetwork(channels)).to(device)
        self.forward_module = self.student

    @property
    def spatial(self) -> SpatialBranch:
        return self.student.spatial

    def modules(self) -> dict:
        return {"fen": self.fen, "student": self.student}

    def trainable_parameters(self):
        return self.spatial.trainable_parameters() + list(self.student.restoration.parameters())

    def wrap(self, wrapper) -> None:
        self.forward_module = wrapper(self.student)

    def train_mode(self) -> None:
        self.fen.eval()
        self.student.train()
        if self.spatial_bn == "eval":
            self.spatial.get_features.eval()  # the frozen ResNet-34 keeps its ImageNet BN statistics

    def eval_mode(self) -> None:
        self.fen.eval()
        self.student.eval()

    def loss(self, x, training: bool = True):
        with torch.no_grad():
            spectral = self.fen(x)
        spatial, restored = (self.forward_module if training else self.student)(x, spectral)
        return stage2_loss(x, restored, spectral, spatial)

    def frozen_keys(self) -> dict:
        """Per entry of :meth:`modules`, the state keys that training never changes: the whole FEN, the
        ResNet-34's weights, and its BatchNorm buffers unless ``--spatial_bn train`` lets them drift."""
        return {"fen": set(self.fen.state_dict()),
                "student": _keys_under(self.student, [self.spatial.get_features],
                                       parameters_only=self.spatial_bn == "train")}

    def selected_state(self) -> dict:
        return {"student": _cpu_state(self.student, self.frozen_keys()["student"])}

    def load_selected(self, state: dict) -> None:
        _load_over(self.student, state["student"])

    def detector_modules(self):
        return {"fen": self.fen, "spatial": self.spatial}

    def export(self, checkpoint_dir, training_info: dict) -> Path:
        folder = band_folder(checkpoint_dir, self.channels)
        with OutputFolder(folder, "--checkpoint_dir", "the checkpoints") as staging:
            save_spatial_branch(staging, self.spatial, training_info)
            save_state(staging / RESTORATION_FILE, self.student.restoration,
                       {"channels": self.channels, "training": training_info})
        return folder

    def describe(self) -> dict:
        return {"fen_backbone": self.fen.backbone, "spatial_backbone": SPATIAL_BACKBONE,
                "spatial_bn": self.spatial_bn, "backbone_weights": self.weights_source}


def load_stage1_for_stage2(checkpoint_dir, channels: int) -> FEN:
    """The stage-1 FEN from ``<checkpoint_dir>/<C>bands/``, with a clear error when it is missing."""
    folder = band_folder(checkpoint_dir, channels)
    missing = [name for name in STAGE1_FILES if not (folder / name).is_file()]
    if missing:
        raise FersError(f"{folder}: stage-1 checkpoint(s) {', '.join(missing)} missing; run stage 1 first "
                        f"(python train.py --stage 1 --input_channel {channels}) or put the released files there")
    return load_fen(folder, channels)


# --------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """Process group facts; ``world_size == 1`` means a single device and no process group."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def wrapper(self):
        if self.world_size == 1:
            return lambda module: module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return lambda module: DistributedDataParallel(module, device_ids=ids)


def setup_distributed(device_name: str = "auto") -> Distributed:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1): nccl on CUDA
    (one GPU per process, ``LOCAL_RANK``), gloo on CPU. Otherwise a single device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Distributed(1, 0, device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(world_size, rank, device)


def shutdown_distributed(dist: Distributed) -> None:
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- run folder and state


def default_run_dir(stage: str, channels: int) -> Path:
    base = REPO_ROOT / "runs" / f"{stage}_{channels}bands_{datetime.now():%Y%m%d-%H%M%S}"
    path, index = base, 1
    while path.exists():
        index += 1
        path = base.with_name(f"{base.name}-{index}")
    return path


def prepare_run_dir(run_dir, fresh: bool = True) -> Path:
    """Create the run folder (checking it is writable); a fresh run refuses a folder that holds one."""
    run_dir = Path(run_dir)
    if fresh and (run_dir / STATE_FILE).exists():
        raise FersError(f"{run_dir}: already holds a training run; continue it with --resume {run_dir} "
                        "or choose another --run_dir")
    return ensure_writable_dir(run_dir, "--run_dir")


def read_run_config(run_dir) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FersError(f"{path}: not found; --resume takes a run folder written by train.py")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise FersError(f"{path}: unreadable run configuration ({error}); start a new run") from None


def rng_states(order: torch.Generator) -> dict:
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
              "data_order": order.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, order: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = copy.deepcopy(states["numpy"])
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    python_state = states["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    order.set_state(states["data_order"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_run_state(run_dir) -> dict | None:
    """The state of the last completed epoch, or None if the run never completed one."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # atomic writes make this unlikely; say what to do
        raise FersError(f"{path}: unreadable training state ({str(error).splitlines()[0].split('. ')[0][:120]}); "
                        "start a new run") from None


def save_frozen(run_dir, stage) -> str:
    """Write ``frozen.pt`` (the state entries training never changes) once; returns its SHA-256."""
    path = Path(run_dir) / FROZEN_FILE
    frozen = stage.frozen_keys()
    payload = {name: _cpu_state(module, set(module.state_dict()) - frozen.get(name, set()))
               for name, module in stage.modules().items()}
    with write_errors(run_dir, "--run_dir"):
        atomic_torch_save(path, payload)
    return sha256_file(path)


def load_frozen(run_dir, sha256: str) -> dict:
    """``frozen.pt`` of a run, checked against the SHA-256 recorded in its ``state.pt``."""
    path = Path(run_dir) / FROZEN_FILE
    if not path.is_file():
        raise FersError(f"{path}: missing; it holds the run's frozen weights (written when the run began) "
                        "and state.pt needs it; restore it or start a new run")
    if sha256_file(path) != sha256:
        raise FersError(f"{path}: does not belong to this run's state.pt (SHA-256 differs from the recorded "
                        "one); restore the run's own frozen.pt or start a new run")
    return torch.load(path, map_location="cpu", weights_only=True)


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


class SignalStopper:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the state on disk is always that
    of a completed epoch and no write is cut in half."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handler(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainingOptions:
    epochs: int = REFERENCE["epochs"]
    batch_size: int = REFERENCE["batch_size"]
    lr: float = REFERENCE["lr"]
    betas: tuple = REFERENCE["betas"]
    seed: int = 0
    selection: str = "last"  # last | val_loss | test_auc
    val_fraction: float = 0.1
    log_test_auc: bool = False
    progress: bool = True
    data_order: str = "seeded"  # seeded | reference (the reference's shuffling DataLoader)
    protocol: dict | None = None  # resolved settings (fers.reference.resolve_protocol), recorded


def _batches(indices: np.ndarray, batch_size: int, world_size: int):
    """Global batches of ``batch_size``; a last batch smaller than the number of processes is dropped
    (DDP needs every process to take part in every step)."""
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        if len(batch) >= world_size:
            yield batch


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
        checkpoint_dir=None, state: dict | None = None, test_scenes=None, log=print) -> dict:
    """Train ``stage`` on ``data``; save the state after every epoch; export the selected weights to
    ``checkpoint_dir``. Returns a summary (selected epoch, metric, export folder)."""
    run_dir = Path(run_dir)
    device = dist.device
    crops = torch.from_numpy(data.crops)
    if options.selection == "val_loss":
        train_indices, held_out = split_held_out(len(crops), options.val_fraction, options.seed)
    else:
        train_indices, held_out = np.arange(len(crops)), np.array([], dtype=np.int64)
    if options.selection == "test_auc" or options.log_test_auc:
        if not test_scenes:
            raise FersError("--select_on_test / --log_test_auc need the HAD100 test set (test/<sensor>/ under --data_path)")
    if options.batch_size % dist.world_size:
        raise FersError(f"--batch_size {options.batch_size} is the global batch: it must be divisible by the "
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
        restore_rng_states(state["rng"], order)
        start_epoch, history, best = state["epoch"], list(state["history"]), state.get("best")
        if dist.is_main:
            log(f"resuming {run_dir} after epoch {start_epoch} of {options.epochs}")
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
                total, terms = stage.loss(x)
                total.backward()
                optimizer.step()
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
                           "modules": {name: _cpu_state(m, frozen_keys.get(name, ()))
                                       for name, m in stage.modules().items()},
                           "frozen_sha256": frozen_sha256,
                           "optimizer": optimizer.state_dict(), "rng": rng_states(order)}
                with write_errors(run_dir, "--run_dir", f" and continue with --resume {run_dir},"):
                    atomic_torch_save(run_dir / STATE_FILE, payload)
                    write_text(run_dir / LOG_FILE, "".join(json.dumps(r) + "\n" for r in history))
                bar.write(_epoch_line(record, options.epochs))
                if reason:
                    bar.write(f"warning: {stage.name} epoch {epoch + 1}: {reason}: the run is diverging "
                              f"(rule: not finite or over {DIVERGENCE_FACTOR:g}× the lowest so far); "
                              "try a smaller --lr", file=sys.stderr)
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
            summary["checkpoint_folder"] = str(stage.export(checkpoint_dir, info))
    dist.barrier()
    return summary


def _epoch_line(record: dict, epochs: int) -> str:
    terms = " ".join(f"{k}={v:.4f}" for k, v in record.items()
                     if k not in ("epoch", "seconds", "selected") and isinstance(v, float))
    return f"epoch {record['epoch']}/{epochs}: {terms} ({record['seconds']:.1f} s)"


def run_config(stage, args: dict, data: TrainingData, options: TrainingOptions, dist: Distributed) -> dict:
    """The content of ``config.json``."""
    return {
        "stage": stage.name,
        "args": args,
        "seed": options.seed,
        "selection": options.selection,
        "selection_uses_test_labels": options.selection == "test_auc",
        "data_order": options.data_order,
        "protocol": options.protocol,
        "optimizer": {"name": "Adam", "lr": options.lr, "betas": list(options.betas)},
        "loss_weights": stage.weights,
        "network": stage.describe(),
        "world_size": dist.world_size,
        "device": str(dist.device),
        "cwd": os.getcwd(),  # relative paths of older runs were relative to it (paths are absolute now)
        "data": {"source": data.source, "crops": len(data), "crop_shape": list(data.crops.shape[1:]),
                 "constant_crops_skipped": data.skipped_constant, "manifest": data.manifest},
        "versions": versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def write_run_config(run_dir, config: dict) -> None:
    with write_errors(run_dir, "--run_dir"):
        write_json(Path(run_dir) / CONFIG_FILE, config)

