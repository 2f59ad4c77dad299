"""Readers by write-then-read round trips; atomic writers leave nothing behind on failure."""

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fers.checkpoints import atomic_torch_save
from fers.errors import FersError
from fers.io import OutputFolder, atomic_path, load_cube, load_mask, write_text


@pytest.fixture
def cube():
    return np.random.default_rng(0).uniform(0, 1000, (5, 7, 4)).astype(np.float32)


def test_npy_npz_and_mat_round_trips(tmp_path, cube):
    np.save(tmp_path / "c.npy", cube)
    np.savez(tmp_path / "c.npz", data=cube)
    scipy.io.savemat(tmp_path / "c.mat", {"data": cube, "map": np.zeros((5, 7))})
    scipy.io.savemat(tmp_path / "other.mat", {"radiance": cube})
    for name in ("c.npy", "c.npz", "c.mat", "other.mat"):
        np.testing.assert_array_equal(load_cube(tmp_path / name), cube)


@pytest.mark.parametrize("matlab_header", [True, False])
def test_mat_v73_hdf5_is_read_in_matlab_order(tmp_path, cube, matlab_header):
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512 if matlab_header else 0) as handle:
        handle["data"] = cube.transpose()  # MATLAB writes column-major: HDF5 holds the reversed axes
        handle["map"] = np.eye(5, 7).transpose()
    if matlab_header:  # what MATLAB's save -v7.3 puts in the user block
        with open(path, "r+b") as handle:
            handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    np.testing.assert_array_equal(load_cube(path), cube)
    np.testing.assert_array_equal(load_mask(path), np.eye(5, 7) != 0)


def test_png_mask_had100_rule_reads_channel_one_of_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[1, 2, 1] = 255
    rgb[3, 3, 0] = 255  # red only: not an anomaly in channel 1 (HAD100 rule), an anomaly in a user's mask
    Image.fromarray(rgb).save(tmp_path / "gt.png")
    expected = np.zeros((4, 6), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(load_mask(tmp_path / "gt.png", rule="had100"), expected)
    expected[3, 3] = True
    np.testing.assert_array_equal(load_mask(tmp_path / "gt.png"), expected)


def test_mask_with_nan_is_rejected(tmp_path):
    mask = np.zeros((3, 3))
    mask[1, 1] = np.nan
    np.save(tmp_path / "gt.npy", mask)
    with pytest.raises(FersError, match="gt.npy: ground truth holds NaN or Inf"):
        load_mask(tmp_path / "gt.npy")


def test_ambiguous_mat_names_the_variables(tmp_path, cube):
    scipy.io.savemat(tmp_path / "two.mat", {"a": cube, "b": cube})
    with pytest.raises(FersError, match=r"two.mat: cannot tell which variable is the cube .*a \(5, 7, 4\)"):
        load_cube(tmp_path / "two.mat")


def test_atomic_writes_leave_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]

    def failing_save(payload, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="writing state.pt failed"):
        atomic_torch_save(tmp_path / "state.pt", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_output_folder_is_all_or_nothing(tmp_path):
    save_dir = tmp_path / "out"
    with pytest.raises(ValueError):
        with OutputFolder(save_dir) as staging:
            write_text(staging / "a.txt", "a")
            raise ValueError("detector failed")
    assert not save_dir.exists()  # created by the failed run, so removed with it
    with OutputFolder(save_dir) as staging:
        write_text(staging / "a.txt", "a")
        write_text(staging / "b.txt", "b")
    assert sorted(p.name for p in save_dir.iterdir()) == ["a.txt", "b.txt"]
