"""The command line: train/eval round trip on configs/smoke.yaml, overrides reach the run's
config.yaml, every error is one line on stderr with exit code 2, --help exits 0."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from selmem.cli import COMMANDS, main
from selmem.tasks import TASKS

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


def train_args(out_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        SMOKE,
        "--train.out-dir",
        str(out_dir),
        "--train.name",
        name,
        *extra,
    ]


def test_train_then_eval(tmp_path, capsys):
    assert main(train_args(tmp_path, "run", "--train.steps", "2", "--train.eval-every", "2")) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert str(run) in out and "test answer accuracy" in out
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2

    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert 0.0 <= evaluated["accuracy"] <= 1.0 and evaluated["chance"] == results["chance"]
    # ckpt/best is the model of the only evaluation (step 2): the same numbers come back
    assert evaluated["accuracy"] == results["test"]["accuracy"]
    assert evaluated["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
    # a checkpoint folder names the run and the checkpoint, as `inspect` accepts it
    assert main(["eval", str(run / "ckpt" / "best")]) == 0
    assert json.loads(capsys.readouterr().out) == evaluated


def test_an_unexpected_error_is_one_line_and_the_traceback_is_opt_in(monkeypatch, capsys):
    def broken(args):
        raise KeyError("deep inside")

    monkeypatch.setitem(COMMANDS, "tasks", broken)
    assert main(["tasks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (KeyError" in err and "SELMEM_TRACEBACK=1" in err
    monkeypatch.setenv("SELMEM_TRACEBACK", "1")
    with pytest.raises(KeyError, match="deep inside"):
        main(["tasks"])


def test_overrides_land_in_the_run_config(tmp_path):
    args = train_args(
        tmp_path,
        "over",
        "--train.steps",
        "1",
        "--model.slots",
        "6",
        "task:mqar",
        "--task.num-pairs",
        "1",
    )
    assert main(args) == 0
    saved = yaml.safe_load((tmp_path / "over" / "config.yaml").read_text())
    smoke = yaml.safe_load(Path(SMOKE).read_text())
    assert (
        saved["model"]["slots"] == 6
        and saved["task"]["num_pairs"] == 1
        and saved["train"]["steps"] == 1
    )
    assert (
        saved["task"]["num_keys"] == smoke["task"]["num_keys"]
    )  # the rest still comes from the YAML
    assert saved["model"]["d_model"] == smoke["model"]["d_model"]


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    listed = [
        line.split(" ")[0]
        for line in capsys.readouterr().out.splitlines()
        if line and line[0] != " "
    ]
    assert listed == list(TASKS)


def test_tasks_checks_a_preset_for_what_needs_no_memory(capsys):
    """`selmem tasks --config` prints the shortcut checks of the preset's task (smoke: mqar, whose
    pairs sit in the first segment and queries in the last, so no answer's source is in its segment)."""
    assert main(["tasks", "--config", SMOKE]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mqar (") and "shortcut F1 (id-segment): " in out
    assert "scored positions whose source ends in their own segment: 0.000" in out


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"]], ids=["bare", "--help", "-h"])
def test_usage_lists_the_commands(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"  {cmd} " in out for cmd in COMMANDS)


@pytest.mark.parametrize("cmd", sorted(set(COMMANDS) - {"tasks"}))
def test_command_help_exits_0(cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    assert f"selmem {cmd}" in capsys.readouterr().out


def test_train_help_lists_nested_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--config", SMOKE, "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ["--train.steps", "--model.slots", "task:mqar"])
    # the objective's fields (ObjectiveConfig) keep their flags under --model, as before they moved
    assert all(flag in out for flag in ["--model.credit", "--model.lambda-read", "--model.read-mass"])
    assert "--model.objective." not in out


def test_the_objective_flags_set_the_objective():
    from selmem.cli import parse_experiment

    exp = parse_experiment(["--config", SMOKE, "--model.credit", "probe", "--model.lambda-read", "0.5",
                            "--model.read-mass", "--model.probe-window", "2"], "selmem train")
    assert (exp.model.objective.credit, exp.model.objective.lambda_read) == ("probe", 0.5)
    assert exp.model.read_mass and exp.model.objective.probe_window == 2
    assert parse_experiment(["--config", SMOKE, "--model.credit", "none"], "selmem train").model.credit == "none"


@pytest.mark.parametrize(
    "yaml_edit, argv, match",
    [
        pytest.param(
            {"train": {"stepz": 2}},
            [],
            r"unknown TrainConfig key\(s\) \['stepz'\]",
            id="unknown-yaml-key",
        ),
        pytest.param(
            {"model": {"select": "sometimes"}},
            [],
            "select must be one of",
            id="bad-literal-in-yaml",
        ),
        pytest.param({"train": {"lr": "1e-3"}}, [], r"write 1\.0e-3", id="number-as-text"),
        pytest.param({}, ["--train.lr=-1"], r"train\.lr must be > 0", id="negative-lr"),
        pytest.param(
            {}, ["--train.segment-len", "16"],
            r"exp\.yaml with the command-line flags: train\.segment_len=16 exceeds model\.max_segment_len=8",
            id="segment>max",
        ),
        pytest.param(
            {"train": {"segment_len": 16}}, [], r"exp\.yaml: train\.segment_len=16 exceeds model\.max_segment_len=8",
            id="segment>max-in-yaml",
        ),
        pytest.param(
            {"task": {"segment_len": 16}}, [], r"exp\.yaml: task\.segment_len=16 exceeds model\.max_segment_len=8",
            id="task-segment>max",
        ),
        pytest.param(
            {}, ["--train.resume"], r"train\.resume needs train\.name", id="resume-without-name"
        ),
        pytest.param(
            {},
            ["--train.resume", "--train.name", "nope"],
            "cannot resume: no checkpoint",
            id="resume-missing-run",
        ),
        pytest.param(
            {}, ["--train.name", "taken"], r"taken already exists", id="run-folder-exists"
        ),
        pytest.param(
            {}, ["--train.device", "gpu0"], r"train\.device='gpu0' is not a device", id="bad-device"
        ),
        pytest.param(
            {}, ["--train.device", "cuda"], r"train\.device='cuda' but CUDA is not available", id="no-cuda",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        pytest.param(
            {}, ["--train.lr", "nan"], r"exp\.yaml with the command-line flags: train\.lr must be a finite number",
            id="nan-lr-flag",
        ),
        pytest.param(
            {"train": {"lr": float("nan")}}, [], r"exp\.yaml: train\.lr must be a finite number, got nan",
            id="nan-lr",
        ),
        pytest.param(
            {"model": {"select": "topk", "topk": 100}}, [],
            r"exp\.yaml: model\.topk=100 exceeds the segment length 8", id="topk>segment",
        ),
    ],
)
def test_train_errors_exit_2_before_training(tmp_path, capsys, yaml_edit, argv, match):
    data = yaml.safe_load(Path(SMOKE).read_text())
    for section, values in yaml_edit.items():
        data[section].update(values)
    data["train"]["out_dir"] = str(tmp_path / "runs")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(data))
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "results.json").write_text("{}")

    assert main(["train", "--config", str(config), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("selmem train: error: ") and captured.err.count("\n") == 1
    assert re.search(match, captured.err), captured.err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["taken"], "a run folder was created"


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param(
            ["train", "--config", "nowhere.yaml"],
            r"config file not found: nowhere\.yaml",
            id="missing-config",
        ),
        pytest.param(
            ["train", "--config"], "--config needs a YAML file path", id="config-without-path"
        ),
        pytest.param(
            ["eval", "nowhere"],
            r"nowhere is not a run folder: no config\.yaml",
            id="eval-not-a-run",
        ),
        pytest.param(
            ["compare", "--config", SMOKE, "--compare.models", "selmem", "transformer"],
            r"unknown model\(s\) \['transformer'\]",
            id="compare-unknown-model",
        ),
        pytest.param(["fit"], r"unknown command 'fit'", id="unknown-command"),
        pytest.param(["tasks", "--config", SMOKE, "--batches", "0"], r"--batches must be >= 1", id="tasks-batches"),
        pytest.param(["tasks", "--config", "seg.yaml"], r"seg\.yaml: train\.segment_len=16 exceeds model\.max_segment_len=8",
                     id="tasks-segment>max"),
    ],
)
def test_other_errors_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    if "seg.yaml" in argv:  # smoke with a segment above model.max_segment_len
        data = yaml.safe_load(Path(SMOKE).read_text())
        data["train"]["segment_len"] = 16
        (tmp_path / "seg.yaml").write_text(yaml.safe_dump(data))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("selmem") and re.search(match, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["seg.yaml"] if "seg.yaml" in argv else [])


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["train", "--model.slots", "abc"], "--model.slots takes an int, got 'abc'", id="bad-int"),
        pytest.param(["train", "--model.slots=1.5"], "--model.slots takes an int, got '1.5'", id="bad-int-equals"),
        pytest.param(["train", "--train.lr", "fast"], "--train.lr takes a float, got 'fast'", id="bad-float"),
        pytest.param(["train", "--model.select", "sometimes"], "--model.select takes one of soft, hard, topk, ",
                     id="bad-choice"),
        pytest.param(["train", "--no-such-flag"], "unknown flag --no-such-flag (see selmem train --help)",
                     id="unknown-flag"),
        pytest.param(["train", "--model.slot", "3"], "unknown flag --model.slot (did you mean --model.slots?)",
                     id="misspelt-flag"),
        pytest.param(["train", "--train.lr"], "--train.lr needs a value", id="missing-value"),
        pytest.param(["train", "--task.num-pairs", "4"],
                     "unknown flag --task.num-pairs (--task.num-pairs belongs to a subcommand: give task:NAME before it",
                     id="subcommand-flag-without-subcommand"),
        pytest.param(["train", "--task.num-pairs", "4", "task:mqar"],
                     "unknown flag --task.num-pairs (--task.num-pairs belongs to the subcommand: give it after task:mqar)",
                     id="subcommand-flag-before-it"),
        pytest.param(["train", "task:mqar", "--task.num-pairs", "4", "--train.steps", "1"],
                     "unknown flag --train.steps (--train.steps is not a flag of task:mqar: give it before task:mqar)",
                     id="outer-flag-after-subcommand"),
        pytest.param(["eval"], "missing argument run (see selmem eval --help)", id="missing-positional"),
        pytest.param(["eval", "a", "b"], "unexpected argument 'b'", id="extra-positional"),
        pytest.param(["generate", "r", "--top-k", "x"], "--top-k takes an int, got 'x'", id="generate-flag"),
    ],
)
def test_a_bad_command_line_is_one_line_naming_the_flag(argv, message, capsys):
    """tyro rejects these while parsing, before any work; it printed a box of 8-10 lines (issue 28)."""
    assert main([argv[0], "--config", SMOKE, *argv[1:]] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"selmem {argv[0]}: error: {message}") and err.count("\n") == 1, err


def test_without_tyros_error_hook_its_box_is_one_line_too(monkeypatch, capsys):
    """tyro._errors is private: a tyro without it still gives one line, the box's first section."""
    monkeypatch.setitem(sys.modules, "tyro._errors", None)  # the import in selmem.cli.parse fails
    assert main(["train", "--config", SMOKE, "--model.slots", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model.slots" in err and "'abc'" in err and "\u2502" not in err, err


@pytest.mark.parametrize(
    "name",
    ["../../x", "../x", "a/b", "ABSOLUTE", "..", ".", "  ", "a\\b"],
    ids=["up-two", "up-one", "nested", "absolute", "dotdot", "dot", "blank", "backslash"],
)
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path, capsys, name):
    """train.name is one folder under train.out_dir: '../../x' once wrote a run outside it."""
    out = tmp_path / "a" / "b" / "runs"  # '../../x' would land in tmp_path/a/x
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    assert main(train_args(out, name)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.name must be a single folder name" in err, err
    assert list(tmp_path.rglob("*")) == [], "a run folder was written"
