"""Bad input never ends in a traceback: one clear line naming the file, exit code 2, no output files."""

import numpy as np
import pytest

from conftest import run_script
from fers.io import save_mask_png


def _nan_cube(root):
    path = root / "test" / "aviris_ng" / "scene1.npy"
    cube = np.load(path)
    cube[3, 4, 10] = np.nan
    np.save(path, cube)
    return path.name, "NaN or Inf"


def _inf_cube(root):
    path = root / "test" / "aviris_ng" / "scene0.npy"
    cube = np.load(path)
    cube[0, 0, :] = np.inf
    np.save(path, cube)
    return path.name, "NaN or Inf"


def _constant_cube(root):
    path = root / "test" / "aviris_ng" / "scene2.npy"
    np.save(path, np.full((64, 64, 60), 0.5, np.float32))
    return path.name, "constant"


def _missing_gt(root):
    path = root / "ground_truth" / "aviris_ng" / "scene1.png"
    path.unlink()
    return "scene1.npy", "no ground truth"


def _gt_other_size(root):
    save_mask_png(root / "ground_truth" / "aviris_ng" / "scene0.png", np.zeros((32, 64), bool))
    return "scene0.png", "ground truth is 32×64 but the cube scene0.npy is 64×64"


def _truncated_cube(root):
    path = root / "test" / "aviris_ng" / "scene0.npy"
    path.write_bytes(path.read_bytes()[:1000])
    return path.name, "truncated"


def _truncated_png(root):
    path = root / "ground_truth" / "aviris_ng" / "scene2.png"
    path.write_bytes(path.read_bytes()[:40])
    return path.name, "not a readable image"


def _two_d_cube(root):
    path = root / "test" / "aviris_ng" / "scene0.npy"
    np.save(path, np.zeros((64, 64), np.float32))
    return path.name, "expected a 3-D cube"


def _empty_folder(root):
    for path in (root / "test" / "aviris_ng").glob("*.npy"):
        path.unlink()
    return "HAD100Dataset", "no test scenes"


CASES = {"nan": _nan_cube, "inf": _inf_cube, "constant": _constant_cube, "missing_gt": _missing_gt,
         "gt_size": _gt_other_size, "truncated_npy": _truncated_cube, "truncated_png": _truncated_png,
         "cube_2d": _two_d_cube, "empty": _empty_folder}


def assert_clean_failure(result, *fragments, save_dir=None):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])
    if save_dir is not None:
        assert not save_dir.exists() or not any(save_dir.iterdir()), list(save_dir.iterdir())


@pytest.mark.parametrize("case", sorted(CASES))
def test_test_py_bad_data(case, had100_layout, random_checkpoints, tmp_path):
    name, message = CASES[case](had100_layout)
    save_dir = tmp_path / "out"
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        random_checkpoints, "--save_dir", save_dir, "--branches", "spectral", "--no_progress")
    assert_clean_failure(result, name, message, save_dir=save_dir)


def test_missing_data_folder(random_checkpoints, tmp_path):
    result = run_script("test.py", "--data_path", tmp_path / "nowhere", "--checkpoint_dir", random_checkpoints,
                        "--save_dir", tmp_path / "out")
    assert_clean_failure(result, "nowhere", "HAD100 folder not found", save_dir=tmp_path / "out")


def test_fewer_bands_with_band_policy_error(had100_layout, random_checkpoints, tmp_path):
    result = run_script("FERS_ABU/test.py", "--data_path", had100_layout, "--input_channel", 200,
                        "--checkpoint_dir", random_checkpoints, "--band_policy", "error",
                        "--save_dir", tmp_path / "out", "--branches", "spectral")
    assert_clean_failure(result, "scene0.npy", "has 60 bands but the model takes 200", save_dir=tmp_path / "out")


@pytest.mark.parametrize("problem", ["missing", "corrupt", "wrong_bands"])
def test_bad_checkpoints(problem, had100_layout, random_checkpoints, tmp_path):
    folder = random_checkpoints / "50bands"
    if problem == "missing":
        (folder / "enc.pt").unlink()
        expected = ("enc.pt", "checkpoint not found")
    elif problem == "corrupt":
        (folder / "convh.pt").write_bytes(b"not a checkpoint")
        expected = ("convh.pt", "corrupt or unreadable checkpoint")
    else:
        for name in ("convh.pt", "enc.pt", "pc.pt", "spa_fen.pt"):
            (folder / name).write_bytes((random_checkpoints / "200bands" / name).read_bytes())
        expected = ("convh.pt", "checkpoint is for 200 bands but --input_channel is 50")
    save_dir = tmp_path / "out"
    result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                        random_checkpoints, "--save_dir", save_dir)
    assert_clean_failure(result, *expected, save_dir=save_dir)


def test_missing_band_folder(had100_layout, tmp_path):
    result = run_script("test.py", "--input_channel", 100, "--data_path", had100_layout, "--checkpoint_dir",
                        tmp_path, "--save_dir", tmp_path / "out")
    assert_clean_failure(result, "100bands", "checkpoint folder not found")


def test_unwritable_save_dir(had100_layout, random_checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_script("test.py", "--data_path", had100_layout, "--checkpoint_dir", random_checkpoints,
                        "--save_dir", blocker / "sub", "--branches", "spectral")
    assert_clean_failure(result, "not writable")
