"""Training losses of stage 1 (FERD) and stage 2 (FERS), with the reference weights.

Every loss returns ``(total, terms)``: the scalar to back-propagate and a dict of the
weighted-before terms (plain floats are taken by the caller with ``.item()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Reference hyper-parameters (pinned by tests/test_losses.py).
STAGE1_WEIGHTS = {"bce": 0.1, "mse": 0.1, "distillation": 1.0}
STAGE2_WEIGHTS = {"cross_covariance": 1.0, "cosine": 0.1, "variance": 0.1, "mse": 1.0, "ssim": 0.01}
SSIM_WINDOW = 5
SSIM_SIGMA = 1.5
BCE_INPUTS = ("logits", "sigmoid")


# --------------------------------------------------------------------------- stage 1


def distillation_loss(teacher: list, student: list) -> torch.Tensor:
    """``Σ_scales mean_n (1 − cos(flatten(teacher_s[n]), flatten(student_s[n])))``: the cosine is
    over each sample's whole flattened ``(c_s·h_s·w_s)`` map (reverse distillation, Deng & Li 2022)."""
    total = 0.0
    for t, s in zip(teacher, student):
        cos = F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
        total = total + (1.0 - cos).mean()
    return total


def pixel_classifier_bce(logits: torch.Tensor, bce_input: str = "logits") -> torch.Tensor:
    """BCE of the SFAM classifier ``conv3(|p2 − p1|)`` ``(N, 1, H, W)`` against the normal label 0.

    ``logits`` (default): the logits go into ``binary_cross_entropy_with_logits`` (a correct BCE).
    ``sigmoid``: the reference's form (FERD ``train.py:160-171``), the classifier's sigmoid output
    fed into the with-logits BCE: ``BCEWithLogits(sigmoid(conv3(|p2 − p1|)), 0)``; it can never go
    below log 2 and its gradient vanishes for confident pixels.
    """
    if bce_input not in BCE_INPUTS:
        raise ValueError(f"bce_input must be one of {BCE_INPUTS}, got {bce_input!r}")
    inputs = torch.sigmoid(logits) if bce_input == "sigmoid" else logits
    return F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs))


def stage1_loss(x: torch.Tensor, outputs: dict, bce_input: str = "logits", weights: dict = STAGE1_WEIGHTS):
    """``0.1·BCE(conv3(|p2 − p1|), 0) + 0.1·MSE(x, reconstruction) + 1.0·distillation``.

    ``x``: cubes ``(N, C, H, W)``; ``outputs``: :meth:`fers.reverse_distillation.FERDNetwork.forward`.
    One classifier term on the absolute difference of the teacher's and the decoder's projections,
    as the reference (FERD ``train.py:160-171``).
    """
    terms = {
        "bce": pixel_classifier_bce(outputs["classifier_logits"], bce_input),
        "mse": F.mse_loss(outputs["reconstruction"], x),
        "distillation": distillation_loss(outputs["teacher"], outputs["student"]),
    }
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms


# --------------------------------------------------------------------------- stage 2


def _channels_by_samples(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` → ``(C, N·H·W)``."""
    return features.transpose(0, 1).reshape(features.shape[1], -1)


def cross_covariance_loss(spectral: torch.Tensor, spatial: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Decorrelation of the two branches (FERS ``losses/losses.py:6-30``): each channel is centred
    by its mean over batch and pixels and divided by its **unbiased** (n − 1) standard deviation
    over batch and pixels plus ``eps``; the ``C×C`` cross-covariance ``Z_speᵀ Z_spa / M``
    (M = N·H·W) is squared and summed."""
    a = _channels_by_samples(spectral)
    b = _channels_by_samples(spatial)
    a = (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + eps)
    b = (b - b.mean(1, keepdim=True)) / (b.std(1, keepdim=True) + eps)
    correlation = a @ b.T / a.shape[1]
    return correlation.square().sum()


def cosine_term(spectral: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
    """``1 + mean_pixels cos_channel(spe, spa)`` (0 when the two point in opposite directions)."""
    return 1.0 + F.cosine_similarity(spectral, spatial, dim=1).mean()


def variance_preservation_loss(spatial: torch.Tensor) -> torch.Tensor:
    """``mean_c ReLU(1 − var_c) + mean |spa|``: keeps every channel of the spatial features alive
    while keeping them small on average. ``var_c`` is the unbiased variance over **each sample's
    pixels**, averaged over the batch (FERS ``losses/losses.py:33-41``:
    ``x.view(N, C, −1).var(dim=2).mean(dim=0)``)."""
    n, c = spatial.shape[:2]
    variance = spatial.reshape(n, c, -1).var(2).mean(0)
    return F.relu(1.0 - variance).mean() + spatial.abs().mean()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None):
    """Normalised 2-D Gaussian ``(size, size)``, the outer product of two 1-D windows."""
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    window = torch.exp(-coords.square() / (2 * sigma ** 2))
    window = window / window.sum()
    return torch.outer(window, window).to(dtype)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             max_val: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """SSIM per pixel and channel ``(N, C, H, W)`` (Wang et al., IEEE TIP 2004), Gaussian window,
    reflect padding ('same' size), constants ``(0.01·max_val)²`` and ``(0.03·max_val)²``:
    the definition kornia's ``SSIMLoss`` uses."""
    channels = x.shape[1]
    kernel = gaussian_window(window_size, sigma, x.dtype, x.device).expand(channels, 1, window_size, window_size)
    pad = window_size // 2

    def blur(image):
        return F.conv2d(F.pad(image, [pad] * 4, mode="reflect"), kernel, groups=channels)

    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov_xy = blur(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    return numerator / (denominator + eps)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = SSIM_WINDOW, max_val: float = 1.0):
    """``mean(clamp((1 − SSIM) / 2, 0, 1))``, as kornia's ``SSIMLoss``."""
    return ((1.0 - ssim_map(x, y, window_size, max_val=max_val)) / 2).clamp(0.0, 1.0).mean()


def stage2_loss(x: torch.Tensor, restored: torch.Tensor, spectral: torch.Tensor, spatial: torch.Tensor,
                weights: dict = STAGE2_WEIGHTS):
    """``CrossCov(spe, spa) + 0.1·(1 + cos) + 0.1·VarPres(spa) + MSE(x̂, x) + 0.01·SSIMLoss₅(x̂, x)``.

    All tensors ``(N, C, H, W)``: the cube, its restoration from ``spe + spa``, and the spectral
    (frozen FEN) and spatial (rebellious student) features.
    """
    terms = {
        "cross_covariance": cross_covariance_loss(spectral, spatial),
        "cosine": cosine_term(spectral, spatial),
        "variance": variance_preservation_loss(spatial),
        "mse": F.mse_loss(restored, x),
        "ssim": ssim_loss(restored, x),
    }
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms
