"""Loss functions of both stages against NumPy/SciPy computations and hand-computed values,
and the pinned reference hyper-parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from fers import losses
from fers.training import REFERENCE


def _numpy_cross_covariance(a: np.ndarray, b: np.ndarray) -> float:
    """Standardise each channel over (N, H, W) by the unbiased std + 1e-6 (the reference, D3); sum of
    squared C×C cross-covariance."""
    a2 = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).astype(np.float64)
    b2 = np.moveaxis(b, 1, 0).reshape(b.shape[1], -1).astype(np.float64)
    za = (a2 - a2.mean(1, keepdims=True)) / (a2.std(1, ddof=1, keepdims=True) + 1e-6)
    zb = (b2 - b2.mean(1, keepdims=True)) / (b2.std(1, ddof=1, keepdims=True) + 1e-6)
    correlation = np.einsum("im,jm->ij", za, zb) / a2.shape[1]
    return float((correlation ** 2).sum())


def test_cross_covariance_matches_numpy():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    b = (0.5 * a + rng.standard_normal(a.shape)).astype(np.float32) * 3 + 1
    got = losses.cross_covariance_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
    np.testing.assert_allclose(got, _numpy_cross_covariance(a, b), rtol=1e-4)


def test_cross_covariance_of_identical_features_counts_each_channel_once():
    # Independent channels of 4 values ±1: unbiased variance 4/3, so each diagonal entry of the
    # cross-covariance is mean(x²)/(4/3) = 3/4 and the off-diagonal ones 0 → 2·(3/4)².
    x = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    x[0, 0] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    x[0, 1] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    np.testing.assert_allclose(losses.cross_covariance_loss(x, x).item(), 2 * 0.75 ** 2, rtol=1e-5)


def test_cosine_term_on_hand_made_tensors():
    spectral = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    np.testing.assert_allclose(losses.cosine_term(spectral, -spectral).item(), 0.0, atol=1e-7)  # opposite
    np.testing.assert_allclose(losses.cosine_term(spectral, 2 * spectral).item(), 2.0, atol=1e-7)  # parallel
    orthogonal = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    np.testing.assert_allclose(losses.cosine_term(spectral, orthogonal).item(), 1.0, atol=1e-7)
    # half the pixels opposite, half parallel → mean cosine 0
    mixed = spectral.clone()
    mixed[:, :, 0] *= -1
    np.testing.assert_allclose(losses.cosine_term(spectral, mixed).item(), 1.0, atol=1e-7)


def test_variance_preservation_on_hand_made_tensor():
    # (N=2, C=2, H=1, W=2); variance over each sample's pixels (unbiased), then the batch mean (D4).
    # Channel 0: sample 0 (0, 2) → 2, sample 1 (1, 1) → 0; mean 1 → ReLU(1 − 1) = 0.
    # Channel 1: sample 0 (0.5, 0.5) → 0, sample 1 (0, 1) → 0.5; mean 0.25 → ReLU(0.75) = 0.75.
    # Mean over channels 0.375; mean |spa| = 6/8.
    spatial = torch.tensor([[[[0.0, 2.0]], [[0.5, 0.5]]],
                            [[[1.0, 1.0]], [[0.0, 1.0]]]])
    np.testing.assert_allclose(losses.variance_preservation_loss(spatial).item(), 0.375 + 0.75, rtol=1e-6)


def _numpy_ssim(x: np.ndarray, y: np.ndarray, size: int = 5, sigma: float = 1.5, max_val: float = 1.0,
                eps: float = 1e-12):
    """Gaussian-window SSIM per pixel with SciPy, 'mirror' borders (= PyTorch reflect padding), kornia's
    1e-12 added to the denominator."""
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    window = np.outer(g, g)

    def blur(image):
        return scipy.ndimage.correlate(image, window, mode="mirror")

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            a, b = x[n, c], y[n, c]
            mu_a, mu_b = blur(a), blur(b)
            var_a = blur(a * a) - mu_a ** 2
            var_b = blur(b * b) - mu_b ** 2
            cov = blur(a * b) - mu_a * mu_b
            out[n, c] = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2) + eps)
    return out


def test_ssim_matches_scipy():
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.1, 0.1, (2, 3, 12, 10))
    y = np.clip(x + 0.03 * rng.standard_normal(x.shape), -0.1, 0.1)
    expected = _numpy_ssim(x, y)
    got = losses.ssim_map(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    loss = losses.ssim_loss(torch.from_numpy(x), torch.from_numpy(y)).item()
    np.testing.assert_allclose(loss, np.clip((1 - expected) / 2, 0, 1).mean(), rtol=1e-6)


def test_ssim_loss_is_zero_for_identical_images():
    x = torch.rand(1, 2, 8, 8)
    np.testing.assert_allclose(losses.ssim_loss(x, x).item(), 0.0, atol=1e-6)


def _stage1_outputs(logit: float):
    teacher = [torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1),
               torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(2, 2, 1, 1)]
    # scale 1: sample 0 orthogonal (1 − cos = 1), sample 1 identical (0) → mean 0.5
    # scale 2: sample 0 parallel (0), sample 1 opposite (2) → mean 1.0
    student = [torch.tensor([[0.0, 2.0], [1.0, 1.0]]).view(2, 2, 1, 1),
               torch.tensor([[6.0, 8.0], [-1.0, 0.0]]).view(2, 2, 1, 1)]
    logits = torch.full((2, 1, 2, 2), logit)
    return {"teacher": teacher, "student": student, "reconstruction": torch.full((2, 3, 2, 2), 0.5),
            "classifier_logits": logits}


def test_stage1_terms_against_hand_computed_values():
    x = torch.zeros(2, 3, 2, 2)
    total, terms = losses.stage1_loss(x, _stage1_outputs(0.0))
    np.testing.assert_allclose(terms["distillation"].item(), 1.5, rtol=1e-6)
    np.testing.assert_allclose(terms["mse"].item(), 0.25, rtol=1e-6)
    np.testing.assert_allclose(terms["bce"].item(), math.log(2.0), rtol=1e-6)  # logit 0 vs label 0
    np.testing.assert_allclose(total.item(), 0.1 * math.log(2.0) + 0.1 * 0.25 + 1.5, rtol=1e-6)


def test_stage1_bce_reference_variant_feeds_a_sigmoid_into_bce_with_logits():
    x = torch.zeros(2, 3, 2, 2)
    _, terms = losses.stage1_loss(x, _stage1_outputs(0.0), bce_input="sigmoid")
    np.testing.assert_allclose(terms["bce"].item(), math.log(1 + math.exp(0.5)), rtol=1e-6)
    # The reference variant never goes below log 2, however confident the classifier is.
    _, confident = losses.stage1_loss(x, _stage1_outputs(-30.0), bce_input="sigmoid")
    np.testing.assert_allclose(confident["bce"].item(), math.log(2.0), rtol=1e-6)
    _, correct = losses.stage1_loss(x, _stage1_outputs(-30.0))
    assert correct["bce"].item() < 1e-12
    with pytest.raises(ValueError):
        losses.pixel_classifier_bce(torch.zeros(1), "probabilities")


def test_stage2_total_is_the_weighted_sum_of_its_terms():
    rng = torch.Generator().manual_seed(1)
    x, restored, spectral, spatial = (torch.rand(2, 4, 8, 8, generator=rng) for _ in range(4))
    total, terms = losses.stage2_loss(x, restored, spectral, spatial)
    expected = (terms["cross_covariance"] + 0.1 * terms["cosine"] + 0.1 * terms["variance"] + terms["mse"]
                + 0.01 * terms["ssim"])
    torch.testing.assert_close(total, expected)
    np.testing.assert_allclose(terms["mse"].item(), ((x - restored) ** 2).mean().item(), rtol=1e-6)


def test_reference_hyper_parameters_are_pinned():
    assert REFERENCE == {"lr": 0.005, "betas": (0.5, 0.999), "batch_size": 16, "epochs": 60, "img_size": 64}
    assert losses.STAGE1_WEIGHTS == {"bce": 0.1, "mse": 0.1, "distillation": 1.0}
    assert losses.STAGE2_WEIGHTS == {"cross_covariance": 1.0, "cosine": 0.1, "variance": 0.1, "mse": 1.0,
                                     "ssim": 0.01}
    assert (losses.SSIM_WINDOW, losses.SSIM_SIGMA) == (5, 1.5)
    from fers.cli.train import main_parser

    args = main_parser().parse_args([])
    assert (args.lr, args.batch_size, args.epochs, args.img_size) == (0.005, 16, 60, 64)
    assert (args.stage, args.backbone, args.protocol) == ("2", "wide_resnet101_2", "default")
    from fers.cli.train import protocol_settings

    stage1, stage2 = protocol_settings("stage1", args), protocol_settings("stage2", args)
    assert (stage1["bce_input"], stage2["spatial_bn"], stage1["selection"], stage1["seed"]) == (
        "logits", "eval", "last", 0)
