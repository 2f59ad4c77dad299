"""Normalisation, band policy and validation against plain NumPy."""

import numpy as np
import pytest

from fers.errors import FersError
from fers.preprocessing import apply_band_policy, normalize_cube, prepare_cube, to_chw, validate_cube


def test_normalize_matches_the_reference_formula():
    rng = np.random.default_rng(0)
    cube = rng.uniform(200, 4000, (8, 9, 5))
    expected = 0.1 * (2 * (cube - cube.min()) / (cube.max() - cube.min()) - 1)
    result = normalize_cube(cube)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)
    assert result.min() == pytest.approx(-0.1) and result.max() == pytest.approx(0.1)


def test_normalize_keeps_precision_with_a_large_offset():
    rng = np.random.default_rng(1)
    signal = rng.uniform(0, 1, (4, 4, 3))
    cube = (1e6 + signal).astype(np.float32)
    expected = 0.1 * (2 * (cube.astype(np.float64) - cube.min()) / (float(cube.max()) - float(cube.min())) - 1)
    np.testing.assert_allclose(normalize_cube(cube), expected, atol=1e-7)


def test_band_policies():
    cube = np.arange(4 * 3 * 10, dtype=np.float64).reshape(4, 3, 10)
    first, note = apply_band_policy(cube, 6, "first")
    np.testing.assert_array_equal(first, cube[:, :, :6])
    assert note == "first 6 of 10 bands"
    same, _ = apply_band_policy(cube, 6, "interp")
    np.testing.assert_array_equal(same, cube[:, :, :6])
    wider, note = apply_band_policy(cube, 19, "interp")
    assert wider.shape == (4, 3, 19) and "interpolated" in note
    np.testing.assert_allclose(wider[:, :, 0], cube[:, :, 0])
    np.testing.assert_allclose(wider[:, :, -1], cube[:, :, -1])
    expected = np.stack([np.interp(np.linspace(0, 9, 19), np.arange(10), cube[i, j])
                         for i in range(4) for j in range(3)]).reshape(4, 3, 19)
    np.testing.assert_allclose(wider, expected)
    with pytest.raises(FersError, match="has 10 bands, fewer than the model's 19"):
        apply_band_policy(cube, 19, "first", "scene.mat")
    with pytest.raises(FersError, match="scene.mat: has 10 bands but the model takes 6"):
        apply_band_policy(cube, 6, "error", "scene.mat")


@pytest.mark.parametrize("value, message", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"),
                                            (-9999.0, "no-data"), (1e-34, "no-data")])
def test_invalid_values_are_rejected_with_the_file_name(value, message):
    cube = np.random.default_rng(2).uniform(0.1, 1, (5, 5, 4))
    cube[1, 2, :] = value
    with pytest.raises(FersError, match=f"scene.npy: 1 pixel.*{message}"):
        validate_cube(cube, "scene.npy")


def test_constant_cube_is_rejected():
    with pytest.raises(FersError, match="constant"):
        prepare_cube(np.full((4, 4, 3), 7.0), 3, name="flat.npy")


def test_to_chw():
    cube = np.arange(24).reshape(2, 3, 4)
    assert to_chw(cube).shape == (4, 2, 3)
    assert to_chw(cube)[1, 0, 2] == cube[0, 2, 1]


def test_minmax_scale_equals_plain_numpy_and_maps_constants_to_zero():
    import torch

    from fers.preprocessing import minmax_scale

    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(4, 5, 6))
    np.testing.assert_array_equal(minmax_scale(values), (values - values.min()) / (values.max() - values.min()))
    np.testing.assert_array_equal(minmax_scale(values, 1.0, 2.0), (values - 1.0) / 1.0)
    per_item = np.stack([(v - v.min()) / (v.max() - v.min()) for v in values])
    np.testing.assert_array_equal(minmax_scale(values, per_item=True), per_item)
    np.testing.assert_array_equal(minmax_scale(torch.from_numpy(values), per_item=True).numpy(), per_item)
    low, high = values.min((0, 1)), values.max((0, 1))  # per-channel bounds broadcast
    np.testing.assert_array_equal(minmax_scale(values, low, high), (values - low) / (high - low))
    constant = np.full((3, 3), 7.0, dtype=np.float32)
    assert minmax_scale(constant).dtype == np.float32 and not minmax_scale(constant).any()
    mixed = torch.from_numpy(np.stack([values[0], np.full((5, 6), 2.0)]))
    assert not minmax_scale(mixed, per_item=True)[1].any()  # a constant map among others: 0
