"""Hyper-parameter values vmapped beside the seeds: one program, each value its own run folder,
its numbers those of the value trained alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from small_runs import small_run

from gru_research.sweep import export_wandb, run_sweep
from gru_research.tables import build_table, load_runs
from gru_research.train import TrainConfig, load_run, train, train_group

SMALL = small_run(seq_len=8, batch_size=4, steps=20, eval_batches=1, seeds=2)
# DESIGN tolerance: float64, to 1e-10 over about 20 steps
CASES = {
    "lr": ({}, [{"lr": 1e-3}, {"lr": 3e-3}]),
    "weight_decay": ({"optimizer": "adamw"}, [{"weight_decay": 0.0}, {"weight_decay": 0.1}]),
    "dropout": ({"task": "copy", "seq_len": 6}, [{"dropout": 0.0}, {"dropout": 0.3}]),
    "gate_bias": ({"cell": "lstm"}, [{"gate_bias": 1.0}, {"gate_bias": 2.0}]),
    "init_scale": ({}, [{"init_scale": 0.05}, {"init_scale": 0.2}]),
    "chrono_t_max": ({}, [{"chrono_t_max": 10.0}, {"chrono_t_max": 30.0}]),
}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_close_records(got: list[dict], want: list[dict]) -> None:
    assert [(r["step"], r["seed"], r["split"]) for r in got] == [
        (r["step"], r["seed"], r["split"]) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        for name, value in w.items():
            if isinstance(value, float):
                assert g[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name


@pytest.mark.parametrize(
    "field", [f if f == "lr" else pytest.param(f, marks=pytest.mark.slow) for f in CASES]
)
def test_vmapped_values_equal_each_value_trained_alone(tmp_path, field):
    options, values = CASES[field]
    config = TrainConfig(**(SMALL | options))
    with jax.enable_x64(True):
        summaries = train_group(config, values, tmp_path / "group", wandb_mode="disabled")
        for value, summary in zip(values, summaries, strict=True):
            name = ",".join(f"{k}={v}" for k, v in value.items())
            folder = tmp_path / "group" / "values" / name
            alone = TrainConfig(**(SMALL | options | value))
            single = train(alone, tmp_path / name, wandb_mode="disabled")
            assert {r["seed"] for r in records(folder)} == {0, 1}  # its own seeds only
            assert_close_records(records(folder), records(tmp_path / name))
            assert summary["final"]["loss"] == pytest.approx(single["final"]["loss"], rel=1e-10)
            grouped, own = load_run(folder), load_run(tmp_path / name)
            assert grouped.config == alone
            # the parameters after Adam's 20 steps: as close as 2 and 4 seeds of one run are
            # to each other (about 3e-10 in the dropout case), a population-size rounding
            leaves = zip(jax.tree.leaves(grouped.params), jax.tree.leaves(own.params), strict=True)
            for a, b in leaves:
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9)


def test_a_group_folder_holds_the_checkpoints_and_each_value_a_run_folder(tmp_path):
    values = [{"lr": 1e-3}, {"lr": 1e-2}]
    group = tmp_path / "group"
    train_group(TrainConfig(**SMALL), values, group, wandb_mode="offline")
    assert (group / "checkpoints").is_dir() and not (group / "summary.json").exists()
    saved = json.loads((group / "config.json").read_text())
    assert saved["values"] == values
    runs = load_runs(group)
    assert sorted(r.config["lr"] for r in runs) == [1e-3, 1e-2]
    for run in runs:
        assert run.folder.parent == group / "values"
        assert {p.name for p in run.folder.iterdir()} >= {"config.json", "metrics.jsonl", "wandb"}
        assert len(run.summary["final"]["loss"]) == 2
    again = train_group(TrainConfig(**SMALL), values, group, wandb_mode="offline")
    assert [s["final"] for s in again] == [r.summary["final"] for r in sorted(
        runs, key=lambda r: r.config["lr"]
    )]  # fmt: skip


@pytest.mark.slow
def test_a_stopped_group_resumes_to_the_uninterrupted_numbers(tmp_path):
    values = [{"lr": 1e-3}, {"lr": 5e-3}]
    config = TrainConfig(**SMALL)
    train_group(config, values, tmp_path / "whole", wandb_mode="disabled")
    train_group(config, values, tmp_path / "cut", wandb_mode="disabled", stop_after=10)
    train_group(config, values, tmp_path / "cut", wandb_mode="disabled")
    for value in ("lr=0.001", "lr=0.005"):
        whole = records(tmp_path / "whole/values" / value)
        assert records(tmp_path / "cut/values" / value) == whole


@pytest.mark.parametrize(
    ("options", "values", "words"),
    [
        ({}, [{"hidden": 8}, {"hidden": 16}], "'hidden' cannot be vmapped; vmappable: lr,"),
        ({}, [{"weight_decay": 0.1}, {"weight_decay": 0.2}], "it needs --optimizer adamw"),
        (
            {"cell": "rnn_tanh"},
            [{"gate_bias": 1.0}, {"gate_bias": 2.0}],
            "'gate_bias' is not read by the rnn_tanh design",
        ),
        ({}, [{"lr": 1e-3}, {"dropout": 0.1}], "must set the same fields"),
        ({}, [{"lr": 1e-3}, {"lr": 1e-3}], "repeat one another"),
        ({}, [{"lr": -1.0}, {"lr": 1e-3}], "lr must be a finite number > 0"),
    ],
)
def test_bad_values_are_one_line_and_write_nothing(tmp_path, options, values, words):
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        train_group(TrainConfig(**(SMALL | options)), values, tmp_path / "g")
    assert words in str(err.value)
    assert not (tmp_path / "g").exists()


TINY_SWEEP = {k: {"value": v} for k, v in SMALL.items() if k != "seeds"}


def write_sweep(path: Path, parameters: dict, **extra) -> Path:
    sweep = {"method": "grid", "seeds": 2, "parameters": TINY_SWEEP | parameters, **extra}
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.slow
def test_a_sweep_trains_its_vmapped_values_as_groups_and_tables_keep_them_apart(tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml",
        {"cell": {"values": ["gru", "mgu"]}, "lr": {"values": [1e-3, 1e-2]}},
        vmap=["lr"],
        report={"metrics": ["loss"], "reference": "gru"},
    )
    lines = []
    summaries = run_sweep(path, tmp_path / "out", wandb_mode="disabled", progress=lines.append)
    assert len(summaries) == 4 and len(lines) == 2  # 2 groups of 2 values each
    assert lines[0].startswith("[1/2] cell=gru: ") and "lr=0.001: loss" in lines[0]
    groups = sorted(p.name for p in (tmp_path / "out/runs").iterdir())
    assert groups == ["cell=gru", "cell=mgu"]
    assert sorted(p.name for p in (tmp_path / "out/runs/cell=gru/values").iterdir()) == [
        "lr=0.001",
        "lr=0.01",
    ]
    table = build_table(load_runs(tmp_path / "out"), "loss", reference="gru")
    assert table.column_keys == ["task", "lr"] and len(table.columns) == 2
    again = []
    run_sweep(path, tmp_path / "out", wandb_mode="disabled", progress=again.append)
    assert all("already done" in line for line in again)


def test_the_wandb_export_drops_the_vmap_list(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"lr": {"values": [1e-3, 1e-2]}}, vmap=["lr"])
    exported = export_wandb(path, tmp_path / "w.yaml")
    assert "vmap" not in exported and "vmap" not in (tmp_path / "w.yaml").read_text()
    assert exported["parameters"]["lr"] == {"values": [1e-3, 1e-2]}


@pytest.mark.parametrize(
    ("parameters", "extra", "words"),
    [
        ({"hidden": {"values": [8, 16]}}, {"vmap": ["hidden"]}, "'hidden' cannot be vmapped"),
        ({"lr": {"value": 1e-3}}, {"vmap": ["lr"]}, "'lr' must be a parameter of the sweep"),
        ({"lr": {"values": [1e-3]}}, {"vmap": "lr"}, "must be a list of parameter names"),
        (
            {"weight_decay": {"values": [0.0, 0.1]}},
            {"vmap": ["weight_decay"]},
            "it needs --optimizer adamw",
        ),
        (
            {"lr": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"}},
            {"vmap": ["lr"], "method": "random"},
            "need method: grid",
        ),
    ],
)
def test_a_bad_vmap_list_is_one_line_and_writes_nothing(tmp_path, parameters, extra, words):
    path = write_sweep(tmp_path / "s.yaml", parameters, **extra)
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        run_sweep(path, tmp_path / "out", wandb_mode="disabled")
    assert words in str(err.value) and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_train_command_vmaps_values(tmp_path):
    out = tmp_path / "g"
    args = [f"--{k}={v}" for k, v in SMALL.items()] + ["--vmap", "lr=0.001,0.01"]
    result = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", "train", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["lr"] for p in printed] == [0.001, 0.01]
    assert (out / "values/lr=0.001/summary.json").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", "train", "--vmap", "lr", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "FIELD=V1,V2" in bad.stderr
