"""RX and the fusion rules against plain NumPy references and the independent ABU values."""

import json

import numpy as np
import pytest
import scipy.io
import torch

from conftest import ABU_DIR, REFERENCE_DIR, assert_matches_published, needs_abu, needs_reference
from fers import detectors
from fers.metrics import auc


def numpy_rx_loop(cube):
    """The reference approach, written plainly: min-max to [0, 1], np.cov, np.linalg.pinv, a pixel loop."""
    h, w, c = cube.shape
    pixels = cube.reshape(-1, c).astype(np.float64)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    inverse = np.linalg.pinv(np.cov(pixels.T))
    centred = pixels - pixels.mean(0)
    return np.array([z @ inverse @ z for z in centred]).reshape(h, w)


def as_batch(cube):
    return torch.from_numpy(np.ascontiguousarray(cube.transpose(2, 0, 1)))[None]


@pytest.mark.parametrize("bands", [5, 50, 200])
def test_rx_float64_equals_numpy_pinv_reference(bands):
    rng = np.random.default_rng(bands)
    mixing = rng.standard_normal((bands, bands))
    cube = (rng.standard_normal((32, 32, bands)) @ mixing + 100.0).astype(np.float32)
    expected = numpy_rx_loop(cube)
    ours = detectors.rx_scores(as_batch(cube), "float64")[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9 * expected.max())
    np.testing.assert_allclose(detectors.rx_scores_numpy(cube), expected, rtol=1e-6, atol=1e-9 * expected.max())


def test_rx_rank_deficient_covariance_matches_pinv():
    """Duplicated bands and more bands than pixels: finite scores equal to the pseudo-inverse reference."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((16, 16, 20))
    duplicated = np.concatenate([base, base[:, :, :10]], axis=2)
    for cube in (duplicated, rng.standard_normal((6, 6, 60))):
        ours = detectors.rx_scores(as_batch(cube), "float64")[0].numpy()
        expected = numpy_rx_loop(cube)
        assert np.isfinite(ours).all()
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-8 * expected.max())


def test_batched_rx_uses_each_scene_statistics():
    rng = np.random.default_rng(4)
    cubes = rng.standard_normal((3, 10, 16, 16)) * np.array([1.0, 5.0, 0.1])[:, None, None, None]
    batch = detectors.rx_scores(torch.from_numpy(cubes), "float64")
    for index in range(3):
        single = detectors.rx_scores(torch.from_numpy(cubes[index:index + 1]), "float64")
        torch.testing.assert_close(batch[index], single[0])


def test_rx_float32_is_the_reference_torch_path():
    rng = np.random.default_rng(5)
    cube = rng.standard_normal((1, 50, 24, 24)).astype(np.float32)
    pixels = torch.from_numpy(cube).reshape(50, -1).T
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    centred = pixels - pixels.mean(0)
    inverse = torch.linalg.pinv(centred.T @ centred / (pixels.shape[0] - 1))
    expected = ((centred @ inverse) * centred).sum(1).reshape(24, 24)
    torch.testing.assert_close(detectors.rx_scores(torch.from_numpy(cube), "float32")[0], expected)


def test_precision_and_fusion_rules_follow_the_reference():
    assert detectors.resolve_rx_precision("reference", 50) == "float32"
    assert detectors.resolve_rx_precision("reference", 100) == "float64"
    assert detectors.resolve_rx_precision("float64", 50) == "float64"
    assert detectors.resolve_fusion("auto", 50) == "product"
    assert detectors.resolve_fusion("auto", 51) == "sum"
    with pytest.raises(ValueError):
        detectors.resolve_fusion("mean", 50)


def test_fused_scores_sum_and_product():
    rng = np.random.default_rng(6)
    x, spe, spa = (torch.from_numpy(rng.standard_normal((2, 8, 12, 12))) for _ in range(3))
    total = detectors.fused_scores(x, spe, spa, "sum")
    torch.testing.assert_close(total, detectors.rx_scores(x + spa + spe))

    def unit(m):
        m = m.numpy()
        low = m.reshape(len(m), -1).min(1)[:, None, None]
        high = m.reshape(len(m), -1).max(1)[:, None, None]
        return (m - low) / (high - low)

    product = detectors.fused_scores(x, spe, spa, "product").numpy()
    expected = unit(detectors.rx_scores(x + spa)) * unit(detectors.rx_scores(x + spe))
    np.testing.assert_allclose(product, expected, rtol=1e-12)
    torch.testing.assert_close(detectors.fused_scores(x, spe, None), detectors.rx_scores(x + spe))
    torch.testing.assert_close(detectors.fused_scores(x, None, spa), detectors.rx_scores(x + spa))
    # auto picks the product for 8 (<= 50) bands
    torch.testing.assert_close(detectors.fused_scores(x, spe, spa, "auto"), torch.from_numpy(expected))


@needs_abu
@needs_reference
def test_rx_auc_on_every_abu_scene_matches_the_independent_reference():
    reference = json.loads((REFERENCE_DIR / "abu-rx-reference.json").read_text())
    scenes = sorted(ABU_DIR.glob("*.mat"))
    assert len(scenes) == 13
    for path in scenes:
        contents = scipy.io.loadmat(path)
        cube, mask = contents["data"], contents["map"] != 0
        expected = reference[path.stem]
        batch = as_batch(cube.astype(np.float64))
        scores = detectors.rx_scores(batch)[0].numpy()
        assert_matches_published(auc(scores, mask), expected["rx_auc_all"], scores, mask, what=path.stem)
        for bands in (50, 100, 200):
            key = f"rx_auc_first{bands}"
            if key in expected:
                scores = detectors.rx_scores(batch[:, :bands])[0].numpy()
                assert_matches_published(auc(scores, mask), expected[key], scores, mask, what=f"{path.stem} {bands}")


def test_autoencoder_detector_is_label_free_by_default_and_deterministic():
    rng = np.random.default_rng(7)
    cube = torch.from_numpy(rng.standard_normal((1, 6, 16, 16)).astype(np.float32))
    cube[0, :, 5, 5] += 6.0
    first, info = detectors.autoencoder_scores(cube, steps=20, seed=1)
    second, _ = detectors.autoencoder_scores(cube, steps=20, seed=1)
    assert info == {"ae_select": "last", "ae_step": 20, "ae_steps": 20}
    assert torch.equal(first, second)
    assert first.shape == (16, 16)
    assert int(first.argmax()) == 5 * 16 + 5
    with pytest.raises(ValueError, match="ground-truth"):
        detectors.autoencoder_scores(cube, steps=2, select="oracle")
    mask = np.zeros((16, 16), bool)
    mask[5, 5] = True
    _, oracle = detectors.autoencoder_scores(cube, steps=5, select="oracle", mask=mask, auc_fn=auc)
    assert oracle["ae_select"] == "oracle" and 1 <= oracle["ae_step"] <= 5
