"""Training as a library (issue 14): one TrainConfig behind the flags, fers.training.train, errors
naming parameters, the fers.training logger. Small configurations only."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from fers.cli.common import ConsoleHandler, as_flags
from fers.cli.train import main_parser, stage_parser
from fers.errors import FersError, ParameterError
from fers.training import SELECTIONS, TrainConfig, TrainingOptions, fit, train
from fers.training_data import load_training_data

SMALL = {"input_channel": 8, "img_size": 32, "backbone": "resnet18", "no_pretrained": True, "no_progress": True,
         "device": "cpu", "epochs": 1, "batch_size": 2}


def test_the_flags_are_the_config_fields_with_the_same_defaults():
    defaults = TrainConfig()
    parsed = vars(main_parser().parse_args([]))
    cli_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]}
    assert set(parsed) == cli_fields
    assert all(parsed[name] == getattr(defaults, name) for name in parsed)
    assert "backbone" in vars(stage_parser("stage1", "x").parse_args([]))
    assert "spatial_bn" not in vars(stage_parser("stage1", "x").parse_args([]))
    assert "stage" not in vars(stage_parser("stage2", "x").parse_args([]))
    assert main_parser().parse_args(["--selection", "test_auc"]).selection == "test_auc"


def test_unknown_choices_are_refused_naming_the_parameter():
    assert SELECTIONS == ("last", "val_loss", "test_auc")
    with pytest.raises(ValueError, match="`selection` lats: choose one of last, val_loss, test_auc"):
        TrainConfig(selection="lats").validate()
    with pytest.raises(ParameterError, match="`img_size` 30: must be a multiple of 8"):
        TrainConfig(img_size=30).validate()
    with pytest.raises(ValueError, match="`selection` lats"):  # fit used to act as "last"
        fit(None, None, TrainingOptions(selection="lats"), "unused", None)
    with pytest.raises(ValueError, match="`crop`"):
        train(selection="last", crop="tiles")
    with pytest.raises(ValueError, match="`lrate`: not a training setting"):
        train(lrate=0.1)


def test_library_errors_name_parameters_and_the_cli_shows_flags(tmp_path):
    with pytest.raises(ValueError) as error:
        load_training_data(tmp_path, 8, img_size=30)
    assert "`img_size` 30" in str(error.value) and "--img_size" not in str(error.value)
    assert as_flags(str(error.value)).startswith("--img_size 30: must be a positive multiple of 8")
    with pytest.raises(FersError, match="check `data_path`"):
        load_training_data(tmp_path, 8, img_size=32)


def test_commands_show_flags_where_the_library_names_parameters():
    """Library messages name parameters; a command shows its flags, in errors and warnings alike,
    including where the flag is not ``--<parameter>`` (``channels`` is ``--input_channel``). In a
    process of its own: the warning is shown as a command line shows it, not recorded by pytest."""
    script = (
        "import warnings\n"
        "from fers.errors import FersError, _format_warning, cli_entry\n"
        "@cli_entry\n"
        "def command(argv=None):\n"
        "    warnings.warn('resnet18: `no_pretrained`: the backbone is randomly initialised')\n"
        "    raise FersError('convh.pt: checkpoint is for 40 bands but `channels` is 50; pass `layout` bhw')\n"
        "try:\n"
        "    command([])\n"
        "finally:\n"
        "    assert warnings.formatwarning is not _format_warning  # the command's format ends with it\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("warning: resnet18: --no_pretrained: the backbone is randomly initialised\n"
                           "error: convh.pt: checkpoint is for 40 bands but --input_channel is 50; "
                           "pass --cube_layout bhw\n")


def test_console_handler_prints_as_the_commands_did(capsys):
    logger = logging.getLogger("fers.training.test")
    handler = ConsoleHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("resume: `data_path` /x (recorded: /y)")
        logger.warning("stage1 epoch 2: diverging; try a smaller `lr`")
    finally:
        logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert out == "resume: --data_path /x (recorded: /y)\n"
    assert err == "warning: stage1 epoch 2: diverging; try a smaller --lr\n"


def test_train_runs_a_stage_and_resumes_from_the_recorded_config(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for index in range(2):
        np.save(scenes / f"s{index}.npy", np.random.default_rng(index).random((32, 32, 10)).astype(np.float32))
    run, checkpoints = tmp_path / "run", tmp_path / "ck"
    config = TrainConfig(stage="1", data_path=str(scenes), run_dir=str(run), checkpoint_dir=str(checkpoints),
                         **SMALL)
    summaries = train(config)
    assert list(summaries) == ["stage1"] and summaries["stage1"]["selected_epoch"] == 1
    assert sorted(p.name for p in (checkpoints / "8bands").iterdir()) == ["convh.pt", "enc.pt", "pc.pt"]
    recorded = json.loads((run / "config.json").read_text())["args"]
    assert TrainConfig.from_dict(recorded) == config  # config.json stores the TrainConfig
    with pytest.raises(ValueError, match="`lr` 0.1: would change the run"):
        train(resume=str(run), lr=0.1)
    summaries = train({"resume": str(run), "epochs": 2, "no_progress": True})
    assert summaries["stage1"]["selected_epoch"] == 2
    assert json.loads((run / "config.json").read_text())["resumes"][-1]["changed"] == {
        "epochs": {"recorded": 1, "now": 2}}


@pytest.mark.parametrize("module", ["config", "stages", "loop", "run_folder", "distributed", "api"])
def test_every_training_module_imports_first_without_a_cycle(module):
    result = subprocess.run([sys.executable, "-c", f"import fers.training.{module}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
