"""Global RX in one place: background statistics, one solver, scoring.

RX (Reed & Yu, IEEE TASSP 1990): ``s(x) = (x − μ)ᵀ Σ⁺ (x − μ)`` with the sample mean μ and
covariance Σ (divided by n − 1) of the scene, Σ⁺ its pseudo-inverse.

- statistics: :func:`batch_statistics` (a batch of scenes held in memory, float64 tensors) and
  :func:`rx_statistics` (one scene read in row chunks, accumulated in float64);
- solver: :func:`solve_covariance` applies the one rule: Cholesky when the estimated condition
  number is at most ``RX_CHOLESKY_MAX_CONDITION`` (the pseudo-inverse truncates nothing there),
  else a symmetric eigendecomposition keeping eigenvalues above ``NUMPY_PINV_RCOND × λ_max``
  (``np.linalg.pinv``'s semantics);
- scoring: :meth:`Whitening.scores` of centred pixels, usable chunk by chunk.

The float32 reference path (the reference's 50-band path) keeps ``torch.linalg.pinv``'s default
cutoff: :func:`reference_inverse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import tuning
from .tuning import GRAM_BLOCKED_MIN_CHANNELS  # noqa: F401 (re-exported: the default blocking threshold)

NUMPY_PINV_RCOND = 1e-15  # np.linalg.pinv's default cutoff, relative to the largest singular value
RX_CHOLESKY_MAX_CONDITION = 1e10  # estimated condition number above which RX takes the eigen (pinv) path


# --------------------------------------------------------------------------- performance kernels


def _gram(rows: torch.Tensor, blocked_min_channels: int | None = None) -> torch.Tensor:
    """``rows @ rowsᵀ`` for ``(N, C, P)``. From ``blocked_min_channels`` channels on (default:
    :func:`fers.tuning.gram_blocked_min_channels`), only the two diagonal blocks and one
    off-diagonal block are multiplied (3/4 of the products; the matrix is symmetric), which BLAS's
    general product cannot know."""
    if blocked_min_channels is None:
        blocked_min_channels = tuning.gram_blocked_min_channels()
    n, c, _ = rows.shape
    if c < blocked_min_channels:
        return rows @ rows.mT
    half = c // 2
    top, bottom = rows[:, :half], rows[:, half:]
    gram = torch.empty(n, c, c, dtype=rows.dtype, device=rows.device)
    torch.matmul(top, top.mT, out=gram[:, :half, :half])
    torch.matmul(bottom, bottom.mT, out=gram[:, half:, half:])
    torch.matmul(bottom, top.mT, out=gram[:, half:, :half])
    gram[:, :half, half:] = gram[:, half:, :half].mT
    return gram


def _inverse_norm_estimate(factor: torch.Tensor, probes: int = 4, steps: int = 2) -> torch.Tensor:
    """A lower estimate of ``‖Σ⁻¹‖₂`` per matrix from its Cholesky factor ``(N, C, C)``: inverse
    iteration on a few fixed pseudo-random vectors (a few ``C²`` solves, no decomposition)."""
    n, c, _ = factor.shape
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(c, probes, generator=generator, dtype=factor.dtype).to(factor.device).expand(n, c, probes)
    for _ in range(steps):
        probe = torch.cholesky_solve(probe / torch.linalg.vector_norm(probe, dim=1, keepdim=True), factor)
    return torch.linalg.vector_norm(probe, dim=1).amax(-1)


# --------------------------------------------------------------------------- statistics


def batch_statistics(cubes: torch.Tensor, blocked_min_channels: int | None = None):
    """``(centred (N, C, P), covariance (N, C, C))`` in float64 of cubes ``(N, C, H, W)``.

    ``centred`` is RX's own pixel-major (channels-last) float64 copy: a triangular solve then reads
    it as the column-major matrix LAPACK wants, with no transposed copy (a channels-last input, the
    networks' output layout, is not transposed either). The input is left untouched."""
    n, c, h, w = cubes.shape
    pixels = torch.empty((n, h, w, c), dtype=torch.float64, device=cubes.device)
    pixels = pixels.permute(0, 3, 1, 2).copy_(cubes).view(n, c, h * w)
    centred = pixels.sub_(pixels.mean(2, keepdim=True))
    return centred, _gram(centred, blocked_min_channels).div_(h * w - 1)


def rx_statistics(chunks) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean (C,), covariance (C, C), count)`` in float64 over pixel chunks.

    ``chunks``: a callable returning a fresh iterable of ``(pixels, C)`` float64 arrays (called
    twice: mean, then the centred scatter, so no float64 copy of the whole scene is made)."""
    count, total = 0, 0
    for pixels in chunks():
        count += len(pixels)
        total = total + pixels.sum(0)
    mean = total / count
    scatter = 0
    for pixels in chunks():  # torch's product: NumPy's OpenBLAS threads stall beside torch's (measured 5-50×)
        centred = torch.from_numpy(pixels - mean)
        scatter = scatter + _gram(centred.T[None])[0].numpy()
    return mean, scatter / (count - 1), count


# --------------------------------------------------------------------------- the solver


def _pinv_eigen(covariance: torch.Tensor):
    """``(eigenvectors, inverse eigenvalues)`` of symmetric ``(N, C, C)`` with ``np.linalg.pinv``'s
    cutoff: eigenvalues at most ``NUMPY_PINV_RCOND × λ_max`` (in magnitude) get 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    keep = eigenvalues.abs() > NUMPY_PINV_RCOND * eigenvalues.abs().amax(-1, keepdim=True)
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, torch.ones_like(eigenvalues)),
                          torch.zeros_like(eigenvalues))
    return eigenvectors, inverse


@dataclass
class Whitening:
    """The solved covariances of a batch: Cholesky factors where ``cholesky`` is true, the
    pseudo-inverse's eigenpairs (``eigen_rows`` of the batch) elsewhere."""

    factor: torch.Tensor
    cholesky: torch.Tensor
    eigen_rows: torch.Tensor
    eigenvectors: torch.Tensor | None
    inverse_eigenvalues: torch.Tensor | None

    def scores(self, centred: torch.Tensor) -> torch.Tensor:
        """``zᵀ Σ⁺ z`` ``(N, P)`` float64 of centred pixels ``(N, C, P)``, which are overwritten
        (the triangular solve runs in place)."""

        def whitened_norms(lower, values):
            whitened = torch.linalg.solve_triangular(lower, values, upper=False, out=values)
            return torch.linalg.vector_norm(whitened, dim=1).square_()

        if self.eigenvectors is None:
            return whitened_norms(self.factor, centred)
        n, _, p = centred.shape
        scores = torch.empty(n, p, dtype=torch.float64, device=centred.device)
        fast = self.cholesky.nonzero().flatten()
        if fast.numel():
            scores[fast] = whitened_norms(self.factor[fast], centred[fast])
        projected = self.eigenvectors.transpose(1, 2) @ centred[self.eigen_rows]
        scores[self.eigen_rows] = (projected.square() * self.inverse_eigenvalues.unsqueeze(-1)).sum(1)
        return scores


def solve_covariance(covariance: torch.Tensor) -> Whitening:
    """The one RX solver rule for float64 covariances ``(N, C, C)``: Cholesky where the estimated
    condition number (trace × a lower estimate of ‖Σ⁻¹‖) is finite and at most
    ``RX_CHOLESKY_MAX_CONDITION``, where the pseudo-inverse equals the inverse; the eigen
    pseudo-inverse with ``np.linalg.pinv``'s cutoff for the others (rank-deficient: duplicated
    bands, fewer pixels than bands)."""
    factor, info = torch.linalg.cholesky_ex(covariance)
    trace = torch.diagonal(covariance, dim1=-2, dim2=-1).sum(-1)
    condition = trace * _inverse_norm_estimate(factor)
    cholesky = (info == 0) & torch.isfinite(condition) & (condition <= RX_CHOLESKY_MAX_CONDITION)
    if bool(cholesky.all()):
        return Whitening(factor, cholesky, cholesky.nonzero().flatten(), None, None)
    eigen_rows = (~cholesky).nonzero().flatten()
    return Whitening(factor, cholesky, eigen_rows, *_pinv_eigen(covariance[eigen_rows]))


def reference_inverse(covariance: torch.Tensor) -> torch.Tensor:
    """The float32 reference path's inverse: ``torch.linalg.pinv`` with its default cutoff
    (``max(C, C) × eps32`` relative), which truncates small eigenvalues."""
    return torch.linalg.pinv(covariance.float())
