"""The synthetic scene generator: determinism, shapes, ground truth, HAD100 layout, RX difficulty."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from fers import synthetic
from fers.datasets import had100_manifest, load_scene
from fers.detectors import rx_scores
from fers.errors import FersError


def test_same_seed_gives_bitwise_identical_scenes_and_other_seeds_differ():
    cube_a, mask_a = synthetic.make_scene(32, 40, 24, seed=7, n_targets=4)
    cube_b, mask_b = synthetic.make_scene(32, 40, 24, seed=7, n_targets=4)
    assert cube_a.tobytes() == cube_b.tobytes()
    np.testing.assert_array_equal(mask_a, mask_b)
    cube_c, _ = synthetic.make_scene(32, 40, 24, seed=8, n_targets=4)
    assert not np.array_equal(cube_a, cube_c)
    assert synthetic.make_background(32, 40, 24, seed=3).tobytes() == \
        synthetic.make_background(32, 40, 24, seed=3).tobytes()


def test_shapes_dtypes_and_value_range():
    cube, mask = synthetic.make_scene(40, 56, 30, seed=1)
    assert cube.shape == (40, 56, 30) and cube.dtype == np.float32
    assert mask.shape == (40, 56) and mask.dtype == bool
    assert np.isfinite(cube).all()
    assert 0.0 < mask.sum() < 0.05 * mask.size
    # reflectance-like values: small negative values only from noise in absorption bands
    assert -0.3 < cube.min() and cube.max() < 1.0
    background = synthetic.make_background(40, 56, 30, seed=1)
    assert background.shape == (40, 56, 30) and background.dtype == np.float32


def test_mask_marks_exactly_the_implanted_targets():
    seed, n_targets = 11, 6
    scene = synthetic.generate_scene(64, 64, 40, seed=seed, n_targets=n_targets)
    background = synthetic.make_background(64, 64, 40, seed=seed)
    # Outside the mask the scene is the anomaly-free background, bit for bit; inside, every
    # pixel has been changed by a target.
    np.testing.assert_array_equal(scene.cube[~scene.mask], background[~scene.mask])
    assert (np.abs(scene.cube[scene.mask] - background[scene.mask]).max(axis=1) > 1e-3).all()
    np.testing.assert_array_equal(scene.mask, scene.target_abundance > 0)
    assert len(scene.targets) == n_targets
    assert sum(t["pixels"] for t in scene.targets) == scene.mask.sum()

    subpixel = [t for t in scene.targets if t["kind"] == "sub-pixel"]
    blobs = [t for t in scene.targets if t["kind"] == "multi-pixel"]
    assert len(subpixel) == len(blobs) == n_targets // 2
    for target in subpixel:
        assert target["pixels"] == 1
        fraction = scene.target_abundance[target["row"], target["col"]]
        assert 0.1 <= fraction <= 0.5
    # Targets never touch, so each is one connected component of the mask.
    labels, count = ndimage.label(scene.mask, structure=np.ones((3, 3)))
    assert count == n_targets
    extents = [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndimage.find_objects(labels)]
    assert sorted(extents)[:len(subpixel)] == [1] * len(subpixel)
    assert all(2 <= extent <= 5 for extent in sorted(extents)[len(subpixel):])
    # Multi-pixel targets have a full-abundance core or partial rims, never above 1.
    assert scene.target_abundance.max() <= 1.0
    assert max(t["max_fraction"] for t in blobs) >= 0.7


def test_no_targets_gives_the_background_and_an_empty_mask():
    cube, mask = synthetic.make_scene(24, 24, 12, seed=2, n_targets=0)
    assert not mask.any()
    assert cube.tobytes() == synthetic.make_background(24, 24, 12, seed=2).tobytes()


def test_endmembers_have_their_physical_features():
    lam = synthetic.wavelengths(211)  # 10 nm steps from 400 nm
    at = {nm: int(np.argmin(np.abs(lam - nm))) for nm in (450, 550, 670, 850, 1000, 1400, 1450, 1650, 2200)}
    vegetation = synthetic.material_spectrum("vegetation", lam)
    assert vegetation[at[850]] > 4 * vegetation[at[670]]  # red edge
    assert vegetation[at[550]] > vegetation[at[670]]  # green peak
    assert vegetation[at[1450]] < vegetation[at[1650]]  # leaf water absorption
    water = synthetic.material_spectrum("water", lam)
    assert water[at[450]] > 5 * water[at[1000]]
    soil = synthetic.material_spectrum("soil", lam)
    assert soil[at[2200]] < soil[at[1650]]  # clay feature
    transmission = synthetic.atmospheric_transmission(lam)
    assert transmission[at[1400]] < 0.5 < transmission[at[1000]]
    noise = synthetic.noise_profile(lam)
    assert noise[at[1400]] > noise[at[1000]] and noise[0] > noise[at[1000]]
    with pytest.raises(ValueError, match="unknown material"):
        synthetic.material_spectrum("cheese", lam)


def test_had100_layout_round_trip(tmp_path):
    root = tmp_path / "synthetic"
    info = synthetic.write_had100_layout(root, n_train=2, n_test=3, size=32, bands=20, seed=5, n_targets=4)
    scenes = had100_manifest(root)
    assert [scene.name for scene in scenes] == ["test_0000", "test_0001", "test_0002"]
    base = 5 * 1_000_003
    for index, scene in enumerate(scenes):
        cube, mask = load_scene(scene)
        expected = synthetic.generate_scene(32, 32, 20, seed=base + 500_000 + index, n_targets=4)
        assert cube.tobytes() == expected.cube.tobytes()
        np.testing.assert_array_equal(mask, expected.mask)
        assert info["test_scenes"][scene.name]["anomaly_pixels"] == expected.mask.sum()
        with Image.open(scene.gt_path) as image:  # RGB like the official ground truth
            assert image.mode == "RGB"
            assert set(np.unique(np.asarray(image))) <= {0, 255}
    train = sorted((root / "train" / "aviris_ng").glob("*.npy"))
    assert [p.name for p in train] == ["train_0000.npy", "train_0001.npy"]
    np.testing.assert_array_equal(np.load(train[1]), synthetic.make_background(32, 32, 20, seed=base + 1))
    assert (root / "synthetic_aviris_ng.json").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left behind

    with pytest.raises(FersError, match="already exists"):
        synthetic.write_had100_layout(root, n_train=1, n_test=1, size=32, bands=20, seed=6)
    synthetic.write_had100_layout(root, n_train=1, n_test=1, size=32, bands=20, seed=6, overwrite=True)
    assert len(had100_manifest(root)) == 1
    assert len(list((root / "train" / "aviris_ng").glob("*.npy"))) == 1


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_plain_rx_finds_the_targets_but_not_perfectly(one_thread):
    aucs = []
    for seed in range(4):
        cube, mask = synthetic.make_scene(64, 64, 100, seed=100 + seed)
        scores = rx_scores(torch.from_numpy(cube.transpose(2, 0, 1).copy())[None])[0].numpy()
        aucs.append(roc_auc_score(mask.ravel(), scores.ravel()))
    assert min(aucs) > 0.75, aucs
    assert 0.85 <= np.mean(aucs) <= 0.98, aucs
