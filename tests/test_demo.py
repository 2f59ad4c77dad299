"""The embedded demo runs end to end on a fresh machine (quick preset), with no download."""

import json

from conftest import run_script


def test_demo_quick_runs_every_step(tmp_path):
    output = tmp_path / "demo"
    result = run_script("demo.py", "--quick", "--output", output, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REDUCED configuration" in result.stdout and "not the paper's" in result.stdout
    summary = json.loads((output / "demo.json").read_text())
    assert set(summary["fers_per_scene"]) == set(summary["rx_per_scene"]) == {"test_0000", "test_0001", "test_0002"}
    assert 0.5 < summary["rx_mean_auc"] <= 1 and 0.5 < summary["fers_mean_auc"] <= 1
    assert f"{summary['fers_mean_auc']:.4f}" in result.stdout and f"{summary['rx_mean_auc']:.4f}" in result.stdout
    for name in ("convh.pt", "enc.pt", "pc.pt", "spa_fen.pt"):
        assert (output / "checkpoints" / "100bands" / name).is_file()
    results = json.loads((output / "results" / "fers" / "results.json").read_text())
    assert results["config"]["branches"] == "both" and results["scenes_total"] == 3


def test_demo_refuses_to_replace_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    result = run_script("demo.py", "--quick", "--output", foreign)
    assert result.returncode == 2
    assert "not a demo folder" in result.stderr
    assert (foreign / "thesis.tex").read_text() == "keep me"
