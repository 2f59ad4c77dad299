"""The same command with the same inputs gives bitwise-identical scores on CPU."""

import scipy.io

from conftest import run_script


def test_detection_twice_gives_identical_bytes(had100_layout, random_checkpoints, tmp_path):
    outputs = []
    for run in ("first", "second"):
        save_dir = tmp_path / run
        result = run_script("test.py", "--input_channel", 50, "--data_path", had100_layout, "--checkpoint_dir",
                            random_checkpoints, "--save_dir", save_dir, "--device", "cpu", "--no_progress")
        assert result.returncode == 0, result.stderr
        outputs.append(save_dir)
    first, second = (scipy.io.loadmat(folder / "scores.mat")["scores"] for folder in outputs)
    assert first.dtype == second.dtype and first.shape == second.shape
    assert first.tobytes() == second.tobytes()
    assert (outputs[0] / "each_auc.txt").read_bytes() == (outputs[1] / "each_auc.txt").read_bytes()
