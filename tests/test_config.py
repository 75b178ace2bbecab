"""Config and CLI input handling: bad input is one line, exit 2, and nothing written."""
from __future__ import annotations

import os

import pytest
import tomllib

from agentsync.cli import main
from agentsync.config import load_config, parse_set
from agentsync.errors import ConfigError
from conftest import agentsync

BAD_INPUT = {
    "unknown strategy": (["train", "--strategy", "nope"], "unknown strategy 'nope'; available: none, allreduce"),
    "unknown task": (["train", "--task", "nope"], "unknown task 'nope'; available: digits, charlm, autoencoder"),
    "zero workers": (["train", "--workers", "0"], "workers must be >= 1 (got 0)"),
    "unknown --set key": (["train", "--set", "strategy.bogus=1"], "unknown option strategy.bogus; allowed:"),
    "bad --set type": (["train", "--set", "optimizer.lr=fast"], "optimizer.lr must be a float"),
    "resume without checkpoint": (["train", "--resume", "{tmp}"], "is not a run folder"),
    "malformed TOML": (["train", "--config", "{tmp}/bad.toml"], "malformed TOML"),
    "unknown flag": (["train", "--wrokers", "2"], "unrecognized arguments: --wrokers"),
    "bad --net": (["train", "--net", "latency=soon"], "comm.net must be latency=<n>ms,bandwidth=<n>Gbit"),
    "straggler outside the job": (["train", "--workers", "2", "--straggler", "9:0.1"],
                                  "comm.straggler must be about worker ranks 0..1"),
    "fault outside the job": (["train", "--workers", "2", "--set", "comm.fault=5:kill@3"],
                              "comm.fault must be about worker ranks 0..1"),
    "zero steps": (["train", "--steps", "0"], "steps must be >= 1 (got 0)"),
    "run folder that cannot be created": (["train", "--steps", "5", "--out", "/proc/agentsync-run"],
                                          "cannot create the run folder '/proc/agentsync-run'"),
    "unknown lr schedule": (["train", "--set", "optimizer.lr_schedule=cosine"],
                            "optimizer.lr_schedule must be one of constant, linear"),
    "unknown lr scaling": (["train", "--set", "optimizer.lr_scaling=cubic"],
                           "optimizer.lr_scaling must be one of linear, none, sqrt"),
    "negative clipping norm": (["train", "--set", "optimizer.max_grad_norm=-1"], "optimizer.max_grad_norm must be >= 0"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD_INPUT[case]
    (tmp_path / "bad.toml").write_text("workers = [unclosed\n")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("agentsync: error: "), err
    assert expected in err
    assert sorted(os.listdir(tmp_path)) == before  # no runs/ folder, nothing else


def test_resume_of_a_run_folder_without_checkpoint_or_with_a_corrupt_one(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(load_config().to_toml())
    assert main(["train", "--resume", str(run)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and err.count("\n") == 1


@pytest.mark.timeout(60)
def test_real_process_exit_code_and_no_traceback(tmp_path):
    result = agentsync("train", "--strategy", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("agentsync: error: unknown strategy") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('workers = 3\nsteps = 7\n[optimizer]\nlr = 0.5\n[strategy]\nname = "none"\n')
    cfg = load_config(path, flags={"workers": 4}, overrides=["optimizer.lr=0.25"])
    assert (cfg.workers, cfg.steps, cfg.optimizer.lr, cfg.strategy.name) == (4, 7, 0.25, "none")
    assert cfg.optimizer.name == "sgd"  # the digits task's default fills what was not given


def test_written_config_round_trips(tmp_path):
    cfg = load_config(overrides=["strategy.bucket_mb=4", "task.hidden=32", "comm.straggler=1:0.5"])
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert tomllib.loads(path.read_text())["strategy"] == {"name": "allreduce", "bucket_mb": 4.0,
                                                           "first_bucket_mb": 1.0}
    assert load_config(path) == cfg


def test_set_syntax_errors_name_the_problem():
    with pytest.raises(ConfigError, match="section.option=value"):
        parse_set(["strategy.alpha"])
    with pytest.raises(ConfigError, match="more than one dot"):
        parse_set(["a.b.c=1"])
    with pytest.raises(ConfigError, match="comm.fault"):
        load_config(overrides=["comm.fault=1:explode@3"])
