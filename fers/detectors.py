"""Training-free detectors that score every pixel: global RX (statistics and solver in
:mod:`fers.rx`), local dual-window RX, the reference fusion of the two feature branches, and the
per-scene autoencoder. As in the reference, each cube is first min-max scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocessing import minmax_scale
from . import tuning
from .rx import (GRAM_BLOCKED_MIN_CHANNELS, NUMPY_PINV_RCOND, RX_CHOLESKY_MAX_CONDITION,  # noqa: F401 (re-exported)
                 batch_statistics, reference_inverse, solve_covariance)

RX_PRECISIONS = ("reference", "float64", "float32")
FUSIONS = ("auto", "sum", "product")
BRANCHES = ("both", "spectral", "spatial")


def _as_pixels(cubes: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(N, H·W, C)``."""
    n, c, h, w = cubes.shape
    return cubes.reshape(n, c, h * w).transpose(1, 2)


def _rx_float64(cubes: torch.Tensor, blocked_min_channels: int | None = None) -> torch.Tensor:
    """Float64 RX scores ``(N, P)`` of cubes ``(N, C, H, W)``: :func:`fers.rx.batch_statistics`,
    :func:`fers.rx.solve_covariance`, one triangular solve (or eigen projection) for all pixels.
    The reference's min-max scaling to [0, 1] multiplies every centred value by one constant, which
    ``zᵀ Σ⁺ z`` (and the relative cutoff) cancels, so it is left out: two passes fewer."""
    centred, covariance = batch_statistics(cubes, blocked_min_channels)
    return solve_covariance(covariance).scores(centred)


def rx_scores(cubes: torch.Tensor, precision: str = "float64", scenes_per_solve: int | None = None,
              blocked_min_channels: int | None = None) -> torch.Tensor:
    """Global RX scores ``(N, H, W)`` for cubes ``(N, C, H, W)`` (a batch of scenes, each with its
    own background statistics).

    - ``float64``: covariance and solve in float64 with the semantics (and, to rounding, the scores)
      of ``np.linalg.pinv``: a Cholesky solve when the covariance is well conditioned, else a
      symmetric eigendecomposition keeping eigenvalues above ``1e-15 × λ_max``; no per-pixel loop.
    - ``float32``: the reference's 50-band path, in float32 with ``torch.linalg.pinv``'s default
      cutoff (``max(C, C) × eps32`` relative), which truncates small eigenvalues.

    Tuning (float64): ``scenes_per_solve`` scenes per solve (default: on the CPU
    :func:`fers.tuning.rx_scenes_per_solve`, on a GPU the whole batch); ``blocked_min_channels``:
    see :func:`fers.rx._gram`. Neither changes the scores beyond rounding.
    """
    if cubes.ndim != 4:
        raise ValueError(f"rx_scores expects (N, C, H, W), got {tuple(cubes.shape)}")
    n, _, h, w = cubes.shape
    if precision == "float32":
        pixels = minmax_scale(_as_pixels(cubes.float()), per_item=True)
        centred = pixels - pixels.mean(1, keepdim=True)
        covariance = centred.transpose(1, 2) @ centred / (centred.shape[1] - 1)
        inverse = reference_inverse(covariance)
        scores = ((centred @ inverse) * centred).sum(-1)
    elif precision == "float64":
        # On the CPU as many scenes as keep their float64 working set in cache (one at 64×64×200:
        # measured 1.6× faster per scene than the whole batch, and bounded memory); GPUs take the batch.
        chunk = scenes_per_solve or (tuning.rx_scenes_per_solve(h * w, cubes.shape[1])
                                     if cubes.device.type == "cpu" else n)
        scores = (torch.cat([_rx_float64(part, blocked_min_channels) for part in cubes.split(chunk)]) if n
                  else _rx_float64(cubes, blocked_min_channels))
    else:
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    return scores.reshape(n, h, w)


def rx_scores_numpy(cube: np.ndarray) -> np.ndarray:
    """Global RX of one ``(H, W, C)`` cube with NumPy: ``np.cov`` and ``np.linalg.pinv`` in float64.
    The plain reference the batched :func:`rx_scores` is tested and benchmarked against (kept
    independent of the library's helpers on purpose)."""
    h, w, c = cube.shape
    pixels = np.asarray(cube, dtype=np.float64).reshape(-1, c)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    centred = pixels - pixels.mean(0)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, inverse, centred).reshape(h, w)


def resolve_rx_precision(rx_precision: str, channels: int) -> str:
    """``reference`` follows the reference release: float32 for 50 bands or fewer, float64 above."""
    if rx_precision not in RX_PRECISIONS:
        raise ValueError(f"rx_precision must be one of {RX_PRECISIONS}, got {rx_precision!r}")
    if rx_precision == "reference":
        return "float32" if channels <= 50 else "float64"
    return rx_precision


def resolve_fusion(fusion: str, channels: int) -> str:
    """``auto`` follows the reference: the product of branch maps for 50 bands or fewer, the sum above."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if fusion == "auto":
        return "product" if channels <= 50 else "sum"
    return fusion


def unit_range(scores: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of ``(N, H, W)`` to [0, 1] (a constant map becomes 0)."""
    return minmax_scale(scores, per_item=True)


def fused_scores(cubes, spectral_features=None, spatial_features=None, fusion: str = "auto",
                 precision: str = "float64") -> torch.Tensor:
    """Anomaly maps ``(N, H, W)`` from the normalised cubes and the branch features (all ``(N, C, H, W)``).

    - one branch given: ``RX(x + features)`` (the FERD-only or spatial-only ablation);
    - both, ``sum``: ``RX(x + spatial + spectral)`` (reference for more than 50 bands);
    - both, ``product``: ``N(RX(x + spatial)) · N(RX(x + spectral))``, N = min-max to [0, 1]
      (reference for 50 bands).
    """
    if spectral_features is None and spatial_features is None:
        return rx_scores(cubes, precision)
    if spectral_features is None or spatial_features is None:
        features = spectral_features if spatial_features is None else spatial_features
        return rx_scores(cubes + features, precision)
    fusion = resolve_fusion(fusion, cubes.shape[1])
    if fusion == "sum":
        return rx_scores(cubes + spatial_features + spectral_features, precision)
    return (unit_range(rx_scores(cubes + spatial_features, precision))
            * unit_range(rx_scores(cubes + spectral_features, precision)))


def local_rx_scores(cube: torch.Tensor, inner: int = 5, outer: int = 15, ridge: float = 1e-6,
                    components: int | None = 20, memory_mb: int = 256) -> torch.Tensor:
    """Local dual-window RX ``(H, W)`` for one cube ``(C, H, W)``.

    Each pixel is scored against the mean and covariance of the ring between an ``inner`` and an
    ``outer`` square window (odd sizes, cut at the scene borders), with a ridge of
    ``ridge × trace/k`` added to the ring covariance for stability.

    ``components``: the cube (min-max scaled to [0, 1]) is first projected on its first
    ``components`` principal components (global PCA); ``None`` or 0 keeps every band. Window sums
    come from integral images of ``x`` and ``x xᵀ`` built over strips of rows, so memory stays near
    ``memory_mb`` (a strip holds ``(rows + outer) · W · k²`` float64 values) instead of ``H·W·k²``.
    """
    if inner % 2 == 0 or outer % 2 == 0 or inner >= outer or inner < 1:
        raise ValueError("inner and outer must be odd with 1 <= inner < outer")
    if components is not None and components < 0:
        raise ValueError("components must be None, 0 (all bands) or positive")
    c, h, w = cube.shape
    device = cube.device
    data = cube.double().reshape(c, -1).T  # (P, C)
    data = minmax_scale(data)
    if components and components < c:
        centred = data - data.mean(0)
        _, eigenvectors = torch.linalg.eigh(centred.T @ centred)
        data = centred @ eigenvectors[:, -components:].flip(-1)
    k = data.shape[1]
    image = data.reshape(h, w, k)
    outer_r, inner_r = outer // 2, inner // 2
    bytes_per_row = 3 * (w + 1) * k * k * 8
    block = max(1, int(memory_mb * 2 ** 20 // bytes_per_row) - 2 * outer_r)
    cols = torch.arange(w, device=device)
    eye = torch.eye(k, dtype=torch.float64, device=device)
    scores = torch.empty(h, w, dtype=torch.float64, device=device)

    def ring_sums(table, rows, radius, top):
        """Window sums ``(len(rows), W, ·)`` of an integral ``table`` whose row 0 is scene row ``top``."""
        r0 = (rows - radius).clamp(0, h) - top
        r1 = (rows + radius + 1).clamp(0, h) - top
        c0 = (cols - radius).clamp(0, w)
        c1 = (cols + radius + 1).clamp(0, w)
        total = table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0]
        count = ((r1 - r0).view(-1, 1) * (c1 - c0).view(1, -1)).double()
        return total, count

    for start in range(0, h, block):
        stop = min(h, start + block)
        top, bottom = max(0, start - outer_r), min(h, stop + outer_r)
        strip = image[top:bottom]
        first = torch.zeros(bottom - top + 1, w + 1, k, dtype=torch.float64, device=device)
        first[1:, 1:] = strip.cumsum(0).cumsum(1)
        second = torch.zeros(bottom - top + 1, w + 1, k * k, dtype=torch.float64, device=device)
        second[1:, 1:] = torch.einsum("hwi,hwj->hwij", strip, strip).reshape(bottom - top, w, k * k).cumsum(0).cumsum(1)
        rows = torch.arange(start, stop, device=device)
        sum_outer, n_outer = ring_sums(first, rows, outer_r, top)
        sum_inner, n_inner = ring_sums(first, rows, inner_r, top)
        sq_outer, _ = ring_sums(second, rows, outer_r, top)
        sq_inner, _ = ring_sums(second, rows, inner_r, top)
        del first, second
        count = (n_outer - n_inner).unsqueeze(-1)
        mean = (sum_outer - sum_inner) / count
        scatter = ((sq_outer - sq_inner) / count).reshape(stop - start, w, k, k) - mean.unsqueeze(-1) * mean.unsqueeze(-2)
        covariance = scatter * (count / (count - 1)).unsqueeze(-1)
        trace = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1) / k
        covariance = covariance + ridge * trace[..., None, None] * eye
        difference = (image[start:stop] - mean).unsqueeze(-1)
        solved = torch.linalg.solve(covariance, difference)
        scores[start:stop] = (difference * solved).sum((-2, -1))
    return scores.float()


class PixelAutoencoder(torch.nn.Module):
    """1×1-convolution autoencoder C → 128 → 32 → 128 → C scoring pixels by reconstruction error."""

    def __init__(self, channels: int):
        super().__init__()
        conv = torch.nn.Conv2d
        self.net = torch.nn.Sequential(conv(channels, 128, 1), torch.nn.ReLU(), conv(128, 32, 1), torch.nn.ReLU(),
                                       conv(32, 128, 1), torch.nn.ReLU(), conv(128, channels, 1))

    def forward(self, x):
        return self.net(x)


def autoencoder_scores(cube: torch.Tensor, steps: int = 50, lr: float = 1e-3, seed: int = 0,
                       select: str = "last", mask=None, auc_fn=None):
    """Train a per-scene pixel autoencoder on ``cube`` ``(1, C, H, W)`` and score pixels by their
    squared reconstruction error ``(H, W)``.

    ``select``: ``last`` (label-free, the map after ``steps`` steps), ``min_loss`` (label-free,
    the step with the lowest training loss) or ``oracle`` (the reference's choice: the step whose
    map has the best AUC against ``mask``, which uses the ground truth). Returns ``(scores, info)``.
    """
    if select not in ("last", "min_loss", "oracle"):
        raise ValueError(f"select must be last, min_loss or oracle, got {select!r}")
    if select == "oracle" and (mask is None or auc_fn is None):
        raise ValueError("select='oracle' needs the ground-truth mask and an AUC function")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = PixelAutoencoder(cube.shape[1]).to(cube.device)
    torch.random.set_rng_state(generator_state)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    best = (None, float("inf"), -1)
    for step in range(1, steps + 1):
        optimiser.zero_grad(set_to_none=True)
        error = (model(cube) - cube).square()
        loss = error.mean()
        loss.backward()
        optimiser.step()
        scores = error.detach().sum(1)[0]
        if select == "last":
            best = (scores, loss.item(), step)
        elif select == "min_loss" and loss.item() < best[1]:
            best = (scores, loss.item(), step)
        elif select == "oracle":
            quality = -auc_fn(scores.cpu().numpy(), mask)
            if quality < best[1]:
                best = (scores, quality, step)
    return best[0], {"ae_select": select, "ae_step": best[2], "ae_steps": steps}
