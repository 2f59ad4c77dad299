"""Training-free detectors that score every pixel: global RX (statistics and solver in
:mod:`fers.rx`), local dual-window RX, the reference fusion of the two feature branches, and the
per-scene autoencoder. As in the reference, each cube is first min-max scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

from .choices import BRANCHES, FUSIONS, RX_PRECISIONS  # noqa: F401 (re-exported)
from .errors import FersError, ParameterError
from .preprocessing import minmax_scale
from . import tuning
from .rx import (GRAM_BLOCKED_MIN_CHANNELS, NUMPY_PINV_RCOND, RX_CHOLESKY_MAX_CONDITION,  # noqa: F401 (re-exported)
                 batch_statistics, reference_inverse, solve_covariance)


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


CRD_BORDER = "cut"  # windows are cut at the scene border: the background holds only real pixels


def _ring_offsets(win_in: int, win_out: int) -> torch.Tensor:
    """``(s, 2)`` row/column offsets of the pixels inside the ``win_out`` square but outside the
    ``win_in`` square centred on a pixel (row-major order)."""
    outer_r, inner_r = win_out // 2, win_in // 2
    steps = torch.arange(-outer_r, outer_r + 1)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    ring = (rows.abs() > inner_r) | (cols.abs() > inner_r)
    return torch.stack([rows[ring], cols[ring]], dim=1)


def check_crd_parameters(win_in: int, win_out: int, lam: float) -> None:
    """Refuse windows and regularisation CRD cannot use (one message per parameter)."""
    if not (isinstance(win_in, int) and win_in >= 1 and win_in % 2 == 1):
        raise ParameterError(f"`win_in` must be an odd positive integer (the guard window), got {win_in!r}")
    if not (isinstance(win_out, int) and win_out % 2 == 1 and win_out > win_in):
        raise ParameterError(f"`win_out` must be an odd integer larger than `win_in` ({win_in}), got {win_out!r}")
    if not lam > 0:
        raise ParameterError(f"`lam` must be positive (the distance-weighted Tikhonov weight λ), got {lam!r}")


def crd_scores(cube: torch.Tensor, win_in: int = 5, win_out: int = 11, lam: float = 1e-6) -> torch.Tensor:
    """Collaborative-representation detector (CRD; W. Li and Q. Du, "Collaborative representation
    for hyperspectral anomaly detection", IEEE TGRS 53(3), 2015) ``(H, W)`` float64 for one cube
    ``(C, H, W)``, on the cube's device.

    Each pixel ``y`` is represented by its background ``X = [x_1 … x_s]`` (``C × s``): the pixels
    inside the ``win_out`` square window but outside the ``win_in`` guard window, both centred on
    ``y`` and odd-sized. With ``Γ = diag(‖y − x_i‖₂)`` the weights are
    ``w = (XᵀX + λ ΓᵀΓ)⁻¹ Xᵀ y`` (neighbours unlike ``y`` cost more) and the score is the residual
    ``‖y − X w‖₂``. The cube is first min-max scaled to [0, 1] (as local RX here); ``w`` does not
    depend on that scale, the score scales with it.

    Border (:data:`CRD_BORDER` ``"cut"``): no padding. Near the border both windows are cut at the
    scene's edge and the background is the real pixels left in the cut ring (fewer than ``s``).
    Mirror or edge padding would put a pixel near the border, or a copy of it, into its own
    background, where it represents itself exactly and scores ~0.

    Batched by square blocks of pixels: one matrix product gives the Gram matrix of every pixel
    the block's windows reach, each pixel's ``XᵀX``, ``Xᵀy`` and distances are gathered from it
    (``‖y − x_i‖² = yᵀy + x_iᵀx_i − 2 x_iᵀy``), the ``s × s`` systems are solved by batched
    Cholesky (least squares for any that is not positive definite) and the residuals come from one
    more product. Pixels outside a cut window get a unit diagonal and a zero right-hand side, so
    their weight is exactly 0. About ``s³/3`` operations per pixel for the solve.
    """
    check_crd_parameters(win_in, win_out, lam)
    if cube.ndim != 3:
        raise ValueError(f"crd_scores expects one cube (C, H, W), got {tuple(cube.shape)}")
    c, h, w = cube.shape
    device = cube.device
    image = minmax_scale(cube.double().reshape(c, -1).T).reshape(h, w, c)  # [0, 1]
    offsets = _ring_offsets(win_in, win_out).to(device)
    radius = win_out // 2
    # pixels per block side: the Gram work per pixel, (block + 2·radius)⁴ / block², is near its minimum
    block = max(8, 2 * radius)
    scores = torch.empty(h, w, dtype=torch.float64, device=device)
    for top in range(0, h, block):
        for left in range(0, w, block):
            rows = torch.arange(top, min(h, top + block), device=device)
            cols = torch.arange(left, min(w, left + block), device=device)
            scores[top:top + len(rows), left:left + len(cols)] = _crd_block(
                image, rows, cols, offsets, radius, lam).reshape(len(rows), len(cols))
    return scores


def crd_scores_numpy(cube: np.ndarray, win_in: int = 5, win_out: int = 11, lam: float = 1e-6,
                     rows: int | None = None) -> np.ndarray:
    """CRD of a ``(H, W, C)`` cube written pixel by pixel with NumPy, straight from the formula: the
    in-scene ring between the windows as ``X``, ``w = np.linalg.solve(XᵀX + λ ΓᵀΓ, Xᵀy)``,
    ``‖y − Xw‖``. The plain reference :func:`crd_scores` is tested and benchmarked against (kept
    independent of its helpers on purpose); ``rows``: only the first rows (the benchmark)."""
    height, width, _ = cube.shape
    image = np.asarray(cube, dtype=np.float64)
    image = (image - image.min()) / (image.max() - image.min())
    big, small = win_out // 2, win_in // 2
    scores = np.zeros((height if rows is None else rows, width))
    for i in range(scores.shape[0]):
        for j in range(width):
            ring = np.array([image[a, b] for a in range(max(0, i - big), min(height, i + big + 1))
                             for b in range(max(0, j - big), min(width, j + big + 1))
                             if abs(a - i) > small or abs(b - j) > small]).T  # X, (C, s)
            y = image[i, j]
            gamma = np.diag(np.linalg.norm(ring - y[:, None], axis=0))
            weights = np.linalg.solve(ring.T @ ring + lam * gamma.T @ gamma, ring.T @ y)
            scores[i, j] = np.linalg.norm(y - ring @ weights)
    return scores


def _crd_block(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, offsets: torch.Tensor, radius: int,
               lam: float) -> torch.Tensor:
    """CRD scores of the pixels ``rows × cols`` (row-major) of ``image`` ``(H, W, C)``."""
    h, w, c = image.shape
    u_top, u_left = max(0, int(rows[0]) - radius), max(0, int(cols[0]) - radius)
    u_bottom, u_right = min(h, int(rows[-1]) + radius + 1), min(w, int(cols[-1]) + radius + 1)
    reach = image[u_top:u_bottom, u_left:u_right].reshape(-1, c)  # every pixel the windows reach (u, C)
    reach_width = u_right - u_left
    gram = reach @ reach.T  # (u, u)
    pixel_rows = rows.repeat_interleave(len(cols))
    pixel_cols = cols.repeat(len(rows))
    ring_rows = pixel_rows[:, None] + offsets[:, 0]
    ring_cols = pixel_cols[:, None] + offsets[:, 1]
    inside = (ring_rows >= 0) & (ring_rows < h) & (ring_cols >= 0) & (ring_cols < w)  # (B, s)
    if not inside.any(1).all():
        raise FersError(f"a {h}×{w} scene leaves some pixel no background between the `win_in` and `win_out` "
                        "windows; use a smaller `win_in` or a larger scene")
    ring = ((ring_rows.clamp(0, h - 1) - u_top) * reach_width + ring_cols.clamp(0, w - 1) - u_left)  # (B, s)
    centre = (pixel_rows - u_top) * reach_width + pixel_cols - u_left  # (B,)
    size = len(reach)
    flat = gram.view(-1)
    system = flat[ring[:, :, None] * size + ring[:, None, :]]  # XᵀX (B, s, s)
    products = flat[ring * size + centre[:, None]]  # Xᵀy (B, s)
    norms = gram.diagonal()
    distance2 = (norms[centre][:, None] + norms[ring] - 2 * products).clamp_min(0)  # ‖y − x_i‖²
    weight = inside.double()
    if inside.all():  # every window whole: no mask to apply
        rhs = products
        system.diagonal(dim1=1, dim2=2).add_(lam * distance2)
    else:
        rhs = products * weight
        system *= weight[:, :, None] * weight[:, None, :]
        system.diagonal(dim1=1, dim2=2).add_(lam * distance2 * weight + (1.0 - weight))
    factor, info = torch.linalg.cholesky_ex(system)
    half = torch.linalg.solve_triangular(factor, rhs[..., None], upper=False)  # two triangular solves:
    weights = torch.linalg.solve_triangular(factor.mT, half, upper=True)[..., 0]  # cheaper than cholesky_solve here
    failed = info != 0
    if failed.any():
        weights[failed] = torch.linalg.lstsq(system[failed].cpu(), rhs[failed, :, None].cpu()).solution[..., 0].to(
            weights.device)
    spread = torch.zeros(len(ring), size, dtype=torch.float64, device=image.device)
    spread.scatter_add_(1, ring, weights * weight)  # each pixel's weights over the reach
    residual = reach[centre] - spread @ reach
    return residual.norm(dim=-1)
