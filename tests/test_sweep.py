"""Sweeps (expand, resume, W&B export) and tables (statistics on runs of known values)."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from small_runs import small_run, sweep_parameters

from gru_research.config import TrainConfig
from gru_research.model import model_param_count
from gru_research.report import PINS_FILE, pins_line, write_report
from gru_research.sweep import (
    expand,
    export_wandb,
    grid_values,
    load_sweep,
    run_sweep,
    sweep_points,
)
from gru_research.tables import build_table, load_runs, to_csv, to_markdown, write_table
from gru_research.tasks import make_task
from gru_research.tracking import file_at_commit, offline_run_files, read_offline_history

TINY = sweep_parameters(small_run(seq_len=8, steps=10, eval_batches=1))


def write_sweep(path: Path, parameters: dict, **extra) -> Path:
    path.write_text(
        yaml.safe_dump({"method": "grid", "seeds": 2, "parameters": parameters, **extra})
    )
    return path


def test_grid_expands_to_the_cartesian_product_in_file_order(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path / "s.yaml",
            {
                "cell": {"values": ["gru", "lstm", "mgu"]},
                "seq_len": {"values": [10, 20]},
                "lr": {"value": 0.01},
            },
        )
    )
    points = expand(sweep)
    assert len(points) == 6
    assert points[0] == {"cell": "gru", "seq_len": 10, "lr": 0.01}
    assert points[1] == {"cell": "gru", "seq_len": 20, "lr": 0.01}
    assert [p["cell"] for p in points] == ["gru", "gru", "lstm", "lstm", "mgu", "mgu"]


def test_random_sweep_draws_n_points_within_the_distributions(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "random",
                "runs": 7,
                "parameters": {
                    "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                    "hidden": {"distribution": "int_uniform", "min": 8, "max": 16},
                    "cell": {"values": ["gru", "lstm"]},
                },
            }
        )
    )
    points = expand(load_sweep(path))
    assert len(points) == 7 and points == expand(load_sweep(path))
    assert all(1e-4 <= p["lr"] <= 1e-2 and 8 <= p["hidden"] <= 16 for p in points)


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"colour": {"value": 1}}, "unknown parameters"),
        ({"seeds": {"value": 3}}, "seeds are not a parameter"),
    ],
)
def test_bad_sweep_files_are_one_line(tmp_path, parameters, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(write_sweep(tmp_path / "s.yaml", parameters))


PAPER_SIZES = {
    "task": {"value": "copy"},
    "one_hot": {"value": True},
    "cell": {"values": ["rnn_tanh", "lstm", "gru", "mgu"]},
    "hidden": {"value": 40},
    "size_like": {"value": "lstm"},
}


def test_per_cell_settings_give_each_design_the_papers_size(tmp_path):
    # Arjovsky et al.'s copy: tanh RNN 80 and LSTM 40 units, the others at the LSTM's count
    per_cell = {"rnn_tanh": {"hidden": 80, "size_like": None}}
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", PAPER_SIZES, per_cell=per_cell))
    points = expand(sweep)
    assert points[0] == {**points[1], "cell": "rnn_tanh", "hidden": 80, "size_like": None}
    sizes = {
        name: cfg.model_config(make_task(cfg.task_config()))
        for name, cfg, _ in sweep_points(sweep, tmp_path / "s.yaml")
    }
    hidden = {name: model.hidden_size for name, model in sizes.items()}
    assert hidden == {"cell=rnn_tanh": 80, "cell=lstm": 40, "cell=gru": 46, "cell=mgu": 57}
    lstm = model_param_count(sizes["cell=lstm"])
    for name in ("cell=gru", "cell=mgu"):
        model = sizes[name]
        assert model_param_count(model) <= lstm
        wider = dataclasses.replace(model, hidden_size=model.hidden_size + 1)
        assert model_param_count(wider) > lstm
    with pytest.raises(ValueError, match="per_cell settings have no W&B form"):
        export_wandb(tmp_path / "s.yaml", tmp_path / "wandb.yaml")
    assert not (tmp_path / "wandb.yaml").exists()


@pytest.mark.parametrize(
    "per_cell, message",
    [
        ({"slstm": {"hidden": 8}}, "per_cell: 'slstm' is not a cell of the sweep; valid: rnn_"),
        ({"lstm": {"colour": 1}}, "per_cell: lstm: unknown parameters"),
        ({"lstm": {"lr": 0.1}}, "per_cell: lstm: 'lr' cannot be set per cell"),
        ({"lstm": 40}, "per_cell: lstm: needs a mapping"),
        ({"lstm": {"seq_len": 10}}, "per_cell: lstm: 'seq_len' is varied over the grid"),
    ],
)
def test_bad_per_cell_settings_are_one_line(tmp_path, per_cell, message):
    parameters = {**PAPER_SIZES, "lr": {"values": [0.1, 0.01]}, "seq_len": {"values": [5, 10]}}
    with pytest.raises(ValueError, match=message):
        load_sweep(write_sweep(tmp_path / "s.yaml", parameters, per_cell=per_cell, vmap=["lr"]))


def test_size_like_and_a_parameter_budget_are_refused_together():
    with pytest.raises(ValueError, match="give param_budget or size_like, not both"):
        TrainConfig(size_like="lstm", param_budget=5000)


@pytest.mark.slow
def test_an_interrupted_sweep_skips_finished_points(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {**TINY, "cell": {"values": ["gru", "min_gru"]}})

    def crash_after_first_point(line):
        raise KeyboardInterrupt(line)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, tmp_path / "out", wandb_mode="disabled", progress=crash_after_first_point)
    first = tmp_path / "out" / "runs" / "cell=gru" / "summary.json"
    assert first.exists() and not (tmp_path / "out" / "runs" / "cell=min_gru").exists()
    before = first.stat().st_mtime_ns
    lines = []
    summaries = run_sweep(path, tmp_path / "out", wandb_mode="disabled", progress=lines.append)
    assert "already done" in lines[0] and "already done" not in lines[1]
    assert first.stat().st_mtime_ns == before
    assert [s["cell"] for s in summaries] == ["gru", "min_gru"]


def test_grid_values_of_a_parameter():
    assert grid_values({"values": [1, 2]}) == [1, 2]
    assert grid_values({"value": None}) == [None]
    assert grid_values({"distribution": "uniform", "min": 0, "max": 1}) is None


@pytest.mark.slow
def test_a_report_of_the_points_finished_so_far_names_the_rest(tmp_path, capsys):
    from gru_research import cli

    cells = {"cell": {"values": ["gru", "min_gru"]}}
    out = tmp_path / "out"
    run_sweep(write_sweep(tmp_path / "first.yaml", {**TINY, "cell": {"value": "gru"}}), out)
    report = {"metrics": ["loss"], "reference": "min_gru"}  # not trained yet: no Welch tests
    path = write_sweep(tmp_path / "s.yaml", {**TINY, **cells}, report=report)
    before = sorted(p.name for p in (out / "runs").iterdir())
    assert cli.main(["sweep", str(path), "--out", str(out), "--report-only"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == before  # nothing trained
    text = (out / "report.md").read_text()
    assert "**Unfinished.** 1 point not trained yet: cell=min_gru." in text
    assert "--report-only" in text and "| gru |" in text and "| min_gru |" not in text
    assert "wall time: nothing trained in this invocation (a report only);" in text
    capsys.readouterr()
    refused = cli.main(["sweep", str(path), "--out", str(out), "--report-only", "--jobs", "2"])
    assert refused == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--jobs: with --report-only nothing is trained or exported")
    )
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "holds no sweep's runs" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_exported_wandb_sweep_command_trains_a_point(tmp_path):
    path = write_sweep(
        tmp_path / "s.yaml",
        {**TINY, "cell": {"values": ["gru", "mgu"]}},
        report={"metrics": ["loss"]},
        name="tiny",
    )
    exported = export_wandb(path, tmp_path / "wandb_sweep.yaml")
    loaded = yaml.safe_load((tmp_path / "wandb_sweep.yaml").read_text())
    assert loaded == exported
    assert {"method", "metric", "parameters", "command"} <= loaded.keys() or "metric" not in loaded
    assert "report" not in loaded and loaded["parameters"]["seeds"] == {"value": 2}
    # what `wandb agent` runs for one point: ${env} ${program-less command} ${args}
    point = expand(load_sweep(path))[1] | {"seeds": 2}
    agent_args = [f"--{k}={v}" for k, v in point.items()]
    executable = shutil.which("gru-research")
    prefix = [executable] if executable else [sys.executable, "-m", "gru_research.cli"]
    command = []
    for part in loaded["command"]:
        if part == "${env}":
            command.append("/usr/bin/env")
        elif part == "${args}":
            command.extend(agent_args)
        elif part == "gru-research":
            command.extend(prefix)
        else:
            command.append(part)
    env = {
        **os.environ,
        "WANDB_RUN_ID": "agentrun",
        "WANDB_SWEEP_ID": "sweep1",
    }
    env.pop("WANDB_MODE", None)  # the code sets the mode itself (offline by default)
    env.pop("WANDB_SERVICE", None)  # an agent starts a fresh process, not one of this one's
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "sweep1" / "agentrun"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cell"] == "mgu" and summary["seeds"] == [0, 1]
    # under the agent: one W&B run, the sweep metric the mean over seeds, per-seed values beside
    (wandb_file,) = offline_run_files(run).values()
    rows = [r for r in read_offline_history(wandb_file) if "validation/loss" in r]
    assert rows and all(
        r["validation/loss"]
        == pytest.approx((r["seed_0/validation/loss"] + r["seed_1/validation/loss"]) / 2)
        for r in rows
    )


def fake_run(root: Path, cell: str, seq_len: int, losses: list, diverged=()) -> None:
    folder = root / f"{cell}-{seq_len}"
    folder.mkdir(parents=True)
    seeds = list(range(len(losses)))
    (folder / "config.json").write_text(
        json.dumps(
            {"run": {"task": "copy", "cell": cell, "seq_len": seq_len, "seeds": len(losses)}}
        )
    )
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "task": "copy",
                "cell": cell,
                "seeds": seeds,
                "diverged": list(diverged),
                "final": {
                    "loss": [
                        None if s in diverged else v for s, v in zip(seeds, losses, strict=True)
                    ]
                },
                "baseline": {"loss": 10 * math.log(8) / (seq_len + 20)},
            }
        )
    )
    lines = [
        json.dumps({"step": step, "seed": s, "split": "validation", "loss": v * 10 / step})
        for step in (5, 10)
        for s, v in zip(seeds, losses, strict=True)
        if s not in diverged
    ]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_table_statistics_on_runs_of_known_values(tmp_path):
    fake_run(tmp_path, "gru", 10, [0.10, 0.12, 0.14])
    fake_run(tmp_path, "lstm", 10, [0.30, 0.31, 0.29, 5.0], diverged=[3])
    fake_run(tmp_path, "gru", 50, [0.20, 0.20])
    fake_run(tmp_path, "lstm", 50, [0.10, 0.12])
    paper = [{"cell": "lstm", "seq_len": 10, "value": 0.25}]
    table = build_table(load_runs(tmp_path), "loss", reference="gru", paper=paper)
    assert table.column_keys == ["task", "seq_len"]
    gru10 = table.entries[(("gru",), ("copy", 10))]
    lstm10 = table.entries[(("lstm",), ("copy", 10))]
    assert gru10.mean == pytest.approx(0.12) and gru10.std == pytest.approx(0.02)
    assert len(gru10.values) == 3 and gru10.diverged == 0
    assert lstm10.mean == pytest.approx(0.30) and len(lstm10.values) == 3
    assert lstm10.diverged == 1 and lstm10.paper == 0.25
    expected_p = stats.ttest_ind([0.30, 0.31, 0.29], [0.10, 0.12, 0.14], equal_var=False).pvalue
    assert lstm10.p_value == pytest.approx(expected_p) and expected_p < 0.05
    assert gru10.best and not lstm10.best
    assert table.entries[(("lstm",), ("copy", 50))].best
    markdown = to_markdown(table)
    assert "**0.1200 ± 0.02** (n=3)" in markdown
    assert "0.3000 ± 0.01 (n=3, 1 div.) * [paper: 0.25]" in markdown
    assert "memoryless baseline" in markdown
    rows = to_csv(table).splitlines()
    assert rows[0].startswith("cell,task,seq_len,metric,mean,std,n,diverged")
    assert len(rows) == 5


def test_runs_that_logged_bits_per_word_as_bpc_still_tabulate(tmp_path):
    """Word-level runs from before the bits_per_token metric logged their bits as "bpc"."""
    fake_run(tmp_path, "gru", 10, [0.5, 0.7])
    summary_file = tmp_path / "gru-10" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["final"]["bpc"] = summary["final"].pop("loss")
    summary["baseline"] = {"bpc": 9.0}
    summary_file.write_text(json.dumps(summary))
    records = (tmp_path / "gru-10" / "metrics.jsonl").read_text().replace('"loss"', '"bpc"')
    (tmp_path / "gru-10" / "metrics.jsonl").write_text(records)
    (run,) = load_runs(tmp_path)
    assert run.values("bits_per_token") == [0.5, 0.7]
    curve = {r["bits_per_token"] for r in run.evaluations("validation", "bits_per_token")}
    assert sorted(curve) == pytest.approx([0.5, 0.7, 1.0, 1.4])
    table = build_table([run], "bits_per_token")
    entry = table.entries[(("gru",), ("copy",))]
    assert entry.mean == pytest.approx(0.6) and table.baselines[("copy",)] == 9.0


def test_settings_a_design_sets_for_itself_stay_in_its_row(tmp_path):
    """Arjovsky's copy: rnn_tanh sets hidden = 80 and size_like = None per cell, the others run
    at size_like = lstm. That is the row's design, not a second column of each length."""
    for cell, settings in [("rnn_tanh", {"size_like": None}), ("gru", {"size_like": "lstm"})]:
        for seq_len in (10, 50):
            fake_run(tmp_path, cell, seq_len, [0.1, 0.2])
            config_file = tmp_path / f"{cell}-{seq_len}" / "config.json"
            config = json.loads(config_file.read_text())
            config["run"].update(settings)
            config_file.write_text(json.dumps(config))
    runs = load_runs(tmp_path)
    split = build_table(runs, "loss")
    assert split.column_keys == ["task", "seq_len", "size_like"] and len(split.columns) == 4
    table = build_table(runs, "loss", row_settings=("size_like",))
    assert table.column_keys == ["task", "seq_len"]
    assert table.columns == [("copy", 10), ("copy", 50)]
    assert all(e.values == [0.1, 0.2] for e in table.entries.values())
    assert len(table.entries) == 4


def test_table_writes_markdown_csv_and_plots(tmp_path):
    fake_run(tmp_path / "runs", "gru", 10, [0.1, 0.2])
    fake_run(tmp_path / "runs", "mgu", 10, [0.3, 0.4])
    write_table(tmp_path, "loss", out_dir=tmp_path)
    assert (tmp_path / "table_loss.md").exists() and (tmp_path / "table_loss.csv").exists()
    plots = list(tmp_path.glob("curves_*.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 1000
    assert np.isfinite(
        float((tmp_path / "table_loss.csv").read_text().splitlines()[1].split(",")[4])
    )


def test_report_checks_claims_on_the_table(tmp_path):
    fake_run(tmp_path / "runs", "gru", 10, [0.10, 0.12])
    fake_run(tmp_path / "runs", "rnn_tanh", 10, [0.69, 0.70])  # baseline 10 ln 8 / 30 = 0.693
    sweep = {
        "name": "claims",
        "seeds": 2,
        "parameters": {"cell": {"values": ["gru", "rnn_tanh"]}, "seq_len": {"value": 10}},
        "report": {
            "metrics": ["loss"],
            "claims": [
                {
                    "text": "tanh at baseline",
                    "where": {"cell": "rnn_tanh"},
                    "within_baseline": 0.02,
                },
                {
                    "text": "gru beats tanh",
                    "where": {"cell": "gru"},
                    "better_than": {"cell": "rnn_tanh"},
                },
                {"text": "gru below 0.05", "where": {"cell": "gru"}, "below": 0.05},
                {"text": "lstm solves it", "where": {"cell": "lstm"}, "below": 0.05},
                {
                    "text": "gru close to tanh",
                    "where": {"cell": "gru"},
                    "close_to": {"cell": "rnn_tanh", "tolerance": 0.1},
                },
                {
                    "text": "gru no worse than tanh",  # better by far: held
                    "where": {"cell": "gru"},
                    "no_worse_than": {"cell": "rnn_tanh", "tolerance": 0.1},
                },
                {
                    "text": "tanh no worse than gru",
                    "where": {"cell": "rnn_tanh"},
                    "no_worse_than": {"cell": "gru", "tolerance": 0.1},
                },
            ],
        },
    }
    (tmp_path / "curves_copy_seq_len=99.png").write_bytes(b"a plot of older runs")
    report = write_report(tmp_path, sweep, command="gru-research sweep x", wall_time_s=60)
    text = report.read_text()
    assert "curves_copy_seq_len=99.png" not in text  # only the plots of these runs
    claims = text.split("## Claims at this scale", 1)[1].splitlines()[4:]
    verdicts = [line.split("|")[2].strip() for line in claims if line.startswith("| ")]
    assert verdicts == [
        *["**held**", "**held**", "**not held**", "**no data**", "**not held**"],
        *["**held**", "**not held**"],
    ]
    assert "git commit" in text and "wall time" in text and "![curves_" in text
    assert "commits that trained the runs: `unrecorded` (2 runs)" in text  # fake runs: no commit


FIRST_PINS, RESEEDED_PINS = "eebd3a95d354206b15fb8a5de81d579faba1f5cc", "e27728151d9b7a2b22a19b"


@pytest.mark.skipif(
    file_at_commit(PINS_FILE, FIRST_PINS) is None, reason="needs the repository's git history"
)
def test_the_report_says_whether_the_output_pins_moved_between_training_commits():
    # the pins were written at FIRST_PINS and changed next at RESEEDED_PINS
    same = pins_line([FIRST_PINS, f"{RESEEDED_PINS}~1+dirty"])
    assert same.endswith("the same at all 2 commits (with local changes at e27728151d9b)")
    assert "**2 different versions** across the 2 commits" in pins_line([FIRST_PINS, RESEEDED_PINS])
    assert "not compared (unrecorded: not a commit" in pins_line(["unrecorded", FIRST_PINS])
    assert pins_line([FIRST_PINS]) == "output pins: nothing to compare (one commit, eebd3a95d354)"


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(EXPERIMENTS.glob("*.yaml")) if p.name != "textbook_claims.yaml"],
    ids=lambda p: p.stem,
)
def test_every_shipped_experiment_file_is_a_valid_sweep(path):
    """Each point builds a config, and each claim and paper number names the sweep's own
    parameters and values (the claims file is checked by its own loader)."""
    sweep = load_sweep(path)
    assert sweep_points(sweep, path)
