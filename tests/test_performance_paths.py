"""Correctness of the fast inference paths (no timing here; speed lives in benchmarks/):
the Cholesky RX against NumPy's pseudo-inverse, its eigen fallback on rank-deficient
covariances, batched against per-scene RX, the FLOP counter against a hand count, and the
detector's folded/channels-last/chunked networks against the plain ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fers import detectors, rx
from fers.evaluation import Detector, inference_copy
from fers.flops import count_macs, network_flops, rx_flops


def numpy_pinv_rx(cube_chw: np.ndarray) -> np.ndarray:
    """Independent reference: min-max to [0, 1], ``np.cov``, ``np.linalg.pinv``, ``zᵀ Σ⁺ z``."""
    c, h, w = cube_chw.shape
    pixels = cube_chw.reshape(c, -1).T.astype(np.float64)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    centred = pixels - pixels.mean(0)
    inverse = np.linalg.pinv(np.cov(pixels, rowvar=False))
    return np.array([z @ inverse @ z for z in centred]).reshape(h, w)


def mixture_cubes(n, c, h, w, seed=0):
    """Cubes ``(n, C, H, W)`` of endmember mixtures plus noise (realistic, well-conditioned covariances)."""
    rng = np.random.default_rng(seed)
    endmembers = rng.uniform(0.1, 1.0, size=(5, c))
    abundances = rng.dirichlet(np.ones(5), size=(n, h, w))
    cubes = abundances @ endmembers + 0.01 * rng.standard_normal((n, h, w, c))
    return np.ascontiguousarray(cubes.transpose(0, 3, 1, 2))


def assert_rx_matches_pinv(cubes):
    ours = detectors.rx_scores(torch.from_numpy(cubes), "float64").numpy()
    for index, cube in enumerate(cubes):
        expected = numpy_pinv_rx(cube)
        np.testing.assert_allclose(ours[index], expected, rtol=1e-6, atol=1e-6 * expected.max())


def test_cholesky_rx_equals_pinv_on_well_conditioned_scenes():
    cubes = mixture_cubes(2, 30, 16, 16)
    factor, info = torch.linalg.cholesky_ex(torch.from_numpy(np.cov(cubes[0].reshape(30, -1))))
    assert int(info) == 0  # the fast path is the one exercised
    assert_rx_matches_pinv(cubes)


def test_rx_with_duplicated_bands_falls_back_to_pinv():
    cubes = mixture_cubes(1, 20, 16, 16, seed=1)
    cubes = np.concatenate([cubes, cubes[:, :5]], axis=1)  # 5 duplicated bands: rank 20 of 25
    assert_rx_matches_pinv(cubes)


def test_rx_with_more_bands_than_pixels_falls_back_to_pinv():
    cubes = mixture_cubes(1, 40, 5, 6, seed=2) + 0.05 * np.random.default_rng(3).standard_normal((1, 40, 5, 6))
    assert_rx_matches_pinv(cubes)  # 30 pixels, 40 bands: rank ≤ 29


def test_rx_near_singular_covariance_takes_the_pinv_semantics():
    # one band equal to another up to 1e-12: Cholesky may succeed but the condition estimate
    # must route it to the eigen path, as pinv's result is what the scores must equal
    cubes = mixture_cubes(1, 12, 16, 16, seed=4)
    cubes[:, -1] = cubes[:, 0] + 1e-9 * np.random.default_rng(5).standard_normal((16, 16))
    covariance = torch.from_numpy(np.cov(cubes[0].reshape(12, -1)))
    factor, _ = torch.linalg.cholesky_ex(covariance[None])
    estimate = covariance.trace() * rx._inverse_norm_estimate(factor)[0]
    eigenvalues = torch.linalg.eigvalsh(covariance)
    assert estimate >= 0.1 * eigenvalues[-1] / eigenvalues[0]  # the estimate sees the ill-conditioning
    assert_rx_matches_pinv(cubes)


def test_batched_rx_equals_per_scene_with_mixed_paths():
    well = mixture_cubes(2, 20, 12, 12, seed=6)
    deficient = np.concatenate([mixture_cubes(1, 15, 12, 12, seed=7)] * 1, axis=0)
    deficient = np.concatenate([deficient, deficient[:, :5]], axis=1)  # 20 bands, rank 15
    cubes = np.concatenate([well[:1], deficient, well[1:]])
    batch = detectors.rx_scores(torch.from_numpy(cubes), "float64")
    for index in range(len(cubes)):
        single = detectors.rx_scores(torch.from_numpy(cubes[index:index + 1]), "float64")
        torch.testing.assert_close(batch[index:index + 1], single, rtol=1e-9, atol=0)


@pytest.mark.parametrize("channels", [rx.GRAM_BLOCKED_MIN_CHANNELS - 1, 131])  # plain; blocked, odd halves
def test_gram_equals_the_plain_product(channels):
    rows = torch.randn(2, channels, 300, dtype=torch.float64).mT.contiguous().mT  # pixel-major, as in RX
    expected = np.einsum("ncp,ndp->ncd", rows.numpy(), rows.numpy())
    gram = rx._gram(rows).numpy()
    np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    # symmetric to rounding, not bitwise: BLAS does not promise a bitwise symmetric product (AMD's
    # kernels differ in the last bits across the diagonal), and Cholesky/eigh read one triangle only
    np.testing.assert_allclose(gram, gram.transpose(0, 2, 1), rtol=0, atol=1e-13 * np.abs(expected).max())


def test_rx_scores_do_not_depend_on_the_memory_layout():
    # 140 bands: the blocked covariance; channels-last (the networks' output), contiguous and sliced inputs
    cubes = torch.from_numpy(mixture_cubes(2, 140, 16, 17, seed=10))
    layouts = {"contiguous": cubes, "channels_last": cubes.contiguous(memory_format=torch.channels_last),
               "sliced": cubes[:, :, 1:, ::2]}
    for name, layout in layouts.items():
        scores = detectors.rx_scores(layout, "float64").numpy()
        for index in range(len(cubes)):
            expected = numpy_pinv_rx(layout[index].numpy())
            np.testing.assert_allclose(scores[index], expected, rtol=1e-6, atol=1e-6 * expected.max(), err_msg=name)


def test_rx_scores_leave_the_input_untouched():
    cubes = torch.from_numpy(mixture_cubes(1, 20, 8, 8, seed=11))
    for layout in (cubes, cubes.double().contiguous(memory_format=torch.channels_last)):
        before = layout.clone()
        detectors.rx_scores(layout, "float64")  # the solve runs in place, on RX's own copy
        torch.testing.assert_close(layout, before, rtol=0, atol=0)


def test_rx_of_a_constant_cube_is_zero_not_nan():
    scores = detectors.rx_scores(torch.ones(1, 4, 3, 3, dtype=torch.float64), "float64")
    torch.testing.assert_close(scores, torch.zeros(1, 3, 3, dtype=torch.float64))


def test_flop_counter_matches_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2),
                        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ConvTranspose2d(4, 2, 2, stride=2),
                        nn.Flatten(), nn.Linear(2 * 10 * 10, 5))
    x = torch.zeros(2, 3, 10, 10)
    counts = count_macs(net, x)
    expected = {"0": 2 * 8 * 10 * 10 * 3 * 9,   # out elements × in channels × kernel
                "2": 2 * 4 * 5 * 5 * 8,
                "3": 2 * 4 * 5 * 5 * 2 * 9,     # groups=2: 2 input channels per output
                "4": 2 * 4 * 5 * 5 * 2 * 4,     # transposed: input elements × out channels × kernel
                "6": 2 * 5 * 200}
    assert dict(counts) == {**expected, "total": sum(expected.values())}
    assert network_flops(net, x) == sum(expected.values())  # 2 FLOPs per MAC, per batch element


def test_rx_flop_formula():
    parts = rx_flops(100, 10, "cholesky")
    assert parts["covariance"] == 2 * 100 * 100 + 2 * 100 * 10
    # blocked covariance from 128 bands on: blocks 65², 66² and 66×65 of the 131² product
    assert rx_flops(100, 131)["covariance"] == 2 * 100 * (65 * 65 + 66 * 66 + 66 * 65) + 2 * 100 * 131
    assert parts["total"] == pytest.approx(2 * 100 * 100 + 2000 + 1000 / 3 + 100 * 100 + 2000)
    with pytest.raises(ValueError):
        rx_flops(10, 2, "svd")


class TinyBranch(nn.Module):
    """Conv + BatchNorm + ReLU network mapping ``(N, C, H, W)`` to ``(N, C, H, W)``."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.body = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.Conv2d(16, channels, 1))

    def forward(self, x):
        return self.body(x)


def tiny_detector(channels=12, seed=0):
    torch.manual_seed(seed)
    fen, spatial = TinyBranch(channels), TinyBranch(channels)
    for module in (fen, spatial):  # non-trivial BatchNorm statistics, so folding matters
        module.body[1].running_mean.uniform_(-0.5, 0.5)
        module.body[1].running_var.uniform_(0.5, 2.0)
        module.body[1].weight.data.uniform_(0.5, 1.5)
    return Detector(channels, fen, spatial, rx_precision="float64", fusion="sum")


def test_inference_copy_folds_batchnorm_and_keeps_outputs():
    module = tiny_detector().fen
    copy = inference_copy(module, channels_last=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules())  # original untouched
    x = torch.randn(3, 12, 9, 9)
    with torch.inference_mode():
        torch.testing.assert_close(copy(x.contiguous(memory_format=torch.channels_last)), module(x),
                                   rtol=1e-5, atol=1e-5)


def test_fast_detector_equals_plain_and_batched_equals_one_at_a_time():
    detector = tiny_detector()
    detector.network_chunk = {"fen": {"cpu": 2}, "spatial": {"cpu": 3}}
    cubes = torch.from_numpy(mixture_cubes(5, 12, 10, 10, seed=8)).float() * 0.1
    fast = detector.score(cubes)
    one_at_a_time = torch.cat([detector.score(cubes[i:i + 1]) for i in range(len(cubes))])
    torch.testing.assert_close(fast, one_at_a_time, rtol=1e-4, atol=1e-4 * float(fast.max()))
    detector.fast_inference = False
    plain = detector.score(cubes)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4 * float(plain.max()))
    spectral, spatial = detector.features(cubes)
    detector.fast_inference = True
    fast_spectral, fast_spatial = detector.features(cubes)
    torch.testing.assert_close(fast_spectral, spectral, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_spatial, spatial, rtol=1e-5, atol=1e-5)


def test_fast_detector_follows_weight_changes():
    detector = tiny_detector()
    cubes = torch.from_numpy(mixture_cubes(2, 12, 8, 8, seed=9)).float() * 0.1
    before = detector.features(cubes)[0]
    with torch.no_grad():
        detector.fen.body[3].bias.add_(1.0)  # e.g. an optimiser step between epochs
    after = detector.features(cubes)[0]
    detector.fast_inference = False
    torch.testing.assert_close(after, detector.features(cubes)[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_fast_detector_on_the_reference_networks_matches_plain():
    from fers.fen import FEN
    from fers.spatial_branch import SpatialBranch

    torch.manual_seed(0)
    detector = Detector(50, FEN(50), SpatialBranch(50), rx_precision="float64")
    cubes = torch.rand(3, 50, 32, 32) * 0.2 - 0.1
    fast_features = detector.features(cubes)
    detector.fast_inference = False
    plain_features = detector.features(cubes)
    for fast, plain in zip(fast_features, plain_features):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_factored_pyramid_pooling_equals_the_concatenated_formulation():
    from fers.spatial_branch import LightSPP

    torch.manual_seed(1)
    spp = LightSPP(32, 10).eval()
    features = torch.randn(2, 32, 5, 7)
    with torch.inference_mode():
        for size in ((20, 28), (9, 13), (5, 7)):
            plain = spp(features, size)
            spp.prepare_inference()
            factored = spp(features, size)
            spp.factored = False
            torch.testing.assert_close(factored, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone, radius", [("wide_resnet101_2", 3), ("resnet18", 4), ("resnet34", 6)])
def test_fen_inference_padding_gives_the_same_features(backbone, radius):
    from fers.fen import FEN, PAD, receptive_radius

    torch.manual_seed(2)
    fen = FEN(20, backbone).eval()
    for module in fen.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    assert receptive_radius(fen.encoder.layer1) == radius
    keys = list(fen.state_dict())
    x = torch.rand(3, 20, 17, 23) * 0.2 - 0.1
    with torch.inference_mode():
        plain = fen(x)
        copy = inference_copy(fen, channels_last=True)  # trimmed, BatchNorm folded, channels-last
        for batch in (1, 3):
            torch.testing.assert_close(copy(x[:batch].contiguous(memory_format=torch.channels_last)),
                                       plain[:batch], rtol=1e-5, atol=1e-6)
        # the original keeps its padding and its checkpoint keys
        assert all(m.padding == (1, 1) for m in fen.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        assert list(fen.state_dict()) == keys and not fen.convh.pad_after
        fen.prepare_inference()
        assert fen.convh.pad == min(PAD, radius) and fen.convh.pad_after
        # all the padding is trimmed: the last 3×3 convolutions, as far as their radii reach the pad
        assert fen.trimmed == fen.convh.pad
        assert sum(m.padding == (0, 0) for m in fen.modules()
                   if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)) == fen.convh.pad
        torch.testing.assert_close(fen(x), plain, rtol=1e-5, atol=1e-6)
        fen.prepare_inference()  # a second call changes nothing
        torch.testing.assert_close(fen(x), plain, rtol=1e-5, atol=1e-6)


def bottleneck_layer1_macs(layer1, height, width, margin, trimmed):
    """Multiply-adds of a Bottleneck layer1 on a map padded by ``margin``: every convolution on the
    padded map, or (``trimmed``) each block's 1×1 conv1 on its input and its valid 3×3 conv2, conv3
    and the shortcut's downsample one pixel smaller on each side, from the layer shapes."""
    total = 0
    for block in layer1:
        after = margin - 1 if trimmed else margin
        for name, conv in block.named_modules():
            if isinstance(conv, nn.Conv2d):
                side = margin if name == "conv1" else after
                per_pixel = conv.in_channels * conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
                total += per_pixel * (height + 2 * side) * (width + 2 * side)
        margin = after
    return total


def test_fen_trimmed_layer1_saves_the_multiply_adds_of_the_padding():
    import copy as copy_module

    from fers.fen import FEN

    fen = FEN(200).eval()  # Wide-ResNet-101-2: three Bottlenecks, receptive radius 3
    x = torch.zeros(1, 200, 64, 64)
    padded = copy_module.deepcopy(fen)  # the inference copy before the trimming: pad 3 after ConvH, crop 3
    padded.convh.pad_after, padded.convh.pad = True, 3
    trimmed = inference_copy(fen)
    counts = {"padded": count_macs(padded, x), "trimmed": count_macs(trimmed, x)}
    expected = {name: bottleneck_layer1_macs(fen.encoder.layer1, 64, 64, 3, name == "trimmed") for name in counts}
    for name, count in counts.items():
        assert sum(v for k, v in count.items() if k.startswith("encoder.layer1.")) == expected[name], name
    saved = counts["padded"]["total"] - counts["trimmed"]["total"]
    assert saved == expected["padded"] - expected["trimmed"]
    assert saved > 0.08 * expected["padded"]  # ≈ 10% of layer1


def test_inference_copies_of_the_reference_networks_fold_every_batchnorm():
    # a network torch.fx cannot trace silently runs unfused (slower): keep both traceable
    from fers.fen import FEN
    from fers.spatial_branch import SpatialBranch

    for network in (FEN(50), SpatialBranch(50)):
        copy = inference_copy(network)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules()), type(network).__name__
