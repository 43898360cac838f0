"""The textbook-claims experiment: each measurement against an independent computation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from gru_research.bench import BenchConfig, bench_model
from gru_research.cells import cell_apply
from gru_research.claims import decide, load_experiment, measure
from gru_research.model import ModelConfig, init_model, model_param_count
from gru_research.reporting import significantly_better
from gru_research.tables import load_runs


@pytest.mark.parametrize("sizes", [(1, 1), (2, 64), (64, 128), (300, 7)])
def test_closed_form_parameter_counts_equal_the_counted_ones(sizes):
    rows = measure.parameter_rows([sizes])
    assert rows[0]["gru closed form"] == rows[0]["gru counted"]
    assert rows[0]["lstm closed form"] == rows[0]["lstm counted"]
    assert rows[0]["gru / lstm"] < 1


def test_equal_param_hidden_is_the_largest_lstm_within_the_gru_budget():
    cfg = BenchConfig("t", batch=2, length=3, embed=16, hidden_size=40)
    hidden = measure.equal_param_hidden(cfg)
    budget = model_param_count(bench_model(cfg, "gru"))

    def lstm_params(h):
        return model_param_count(bench_model(BenchConfig("t", 2, 3, 16, h), "lstm"))

    assert hidden < 40
    assert lstm_params(hidden) <= budget < lstm_params(hidden + 1)


def test_gate_trace_is_the_reset_gate_of_each_step():
    config = ModelConfig(cell="gru", vocab_size=7, hidden_size=5, output_size=7)
    params = init_model(jax.random.key(3), config)
    tokens = jax.random.randint(jax.random.key(4), (2, 6), 0, 7)
    trace = np.asarray(measure.gate_trace(params, config, tokens))
    layer = params["layers"][0]
    h = jnp.zeros((2, 5))
    for t in range(6):
        x = params["embed"][tokens[:, t]]
        r = jax.nn.sigmoid(x @ layer["W"]["r"] + layer["b"]["r"] + h @ layer["U"]["r"])
        np.testing.assert_allclose(trace[:, t], r.mean(-1), rtol=1e-5, atol=1e-6)
        h, _ = cell_apply(layer, config.design, h, x)
    no_reset = ModelConfig(cell="gru_no_reset", vocab_size=7, hidden_size=5, output_size=7)
    fixed = measure.gate_trace(init_model(jax.random.key(3), no_reset), no_reset, tokens)
    np.testing.assert_array_equal(np.asarray(fixed), 1.0)


def test_gate_trace_reads_any_layer_of_a_deep_model():
    """Layer 1 of a 2-layer model: r by hand from layer 0's outputs, stepped one at a time."""
    config = ModelConfig(cell="gru", vocab_size=7, hidden_size=5, output_size=7, num_layers=2)
    params = init_model(jax.random.key(5), config)
    tokens = jax.random.randint(jax.random.key(6), (2, 6), 0, 7)
    trace = np.asarray(measure.gate_trace(params, config, tokens, layer=1))
    bottom, top = params["layers"]
    h0, h1 = jnp.zeros((2, 5)), jnp.zeros((2, 5))
    for t in range(6):
        h0, y0 = cell_apply(bottom, config.design, h0, params["embed"][tokens[:, t]])
        r = jax.nn.sigmoid(y0 @ top["W"]["r"] + top["b"]["r"] + h1 @ top["U"]["r"])
        np.testing.assert_allclose(trace[:, t], r.mean(-1), rtol=1e-5, atol=1e-6)
        h1, _ = cell_apply(top, config.design, h1, y0)


def test_boundaries_and_the_profile_around_them():
    inputs = np.array([[5, 0, 0, 5, 0, 5, 5, 0, 0]])
    np.testing.assert_array_equal(
        measure.boundary_positions(inputs, [0, 0])[0], [0, 0, 1, 0, 0, 0, 0, 0, 1]
    )
    np.testing.assert_array_equal(measure.boundary_positions(inputs, [0])[0], inputs[0] == 0)
    trace = np.arange(9, dtype=float)[None]
    profile = measure.boundary_profile(
        trace, measure.boundary_positions(inputs, [0, 0]), range(-1, 2)
    )
    assert profile == {-1: (1 + 7) / 2, 0: (2 + 8) / 2, 1: 3.0}  # offset 1 of step 8 is outside


def _write_run(folder: Path, cell: str, finals: list[float], curve: dict[int, list[float]]):
    folder.mkdir(parents=True)
    config = {"task": "adding", "cell": cell, "seq_len": 100, "steps": 400, "seeds": len(finals)}
    (folder / "config.json").write_text(json.dumps({"run": config}))
    summary = {"final": {"loss": finals}, "diverged": [], "steps": 400, "params_per_seed": 10}
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = [
        json.dumps({"step": step, "seed": s, "split": "validation", "loss": v})
        for step, values in curve.items()
        for s, v in enumerate(values)
    ]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_pairs_welch_verdicts_and_the_equal_time_reading(tmp_path):
    _write_run(tmp_path / "a", "gru", [0.10, 0.11, 0.12], {200: [0.5] * 3, 400: [0.1, 0.11, 0.12]})
    _write_run(
        tmp_path / "b",
        "lstm",
        [0.50, 0.52, 0.51],
        {200: [0.60, 0.61, 0.62], 400: [0.09, 0.1, 0.11]},
    )
    ((setting, a, b),) = measure.design_pairs(load_runs(tmp_path), "gru", "lstm")
    assert setting == "adding" and a.config["cell"] == "gru"

    def compared(seconds):
        row = measure.compare_pair("src", setting, a, b, "loss", seconds)
        return decide.with_outcomes([row], ("gru", "lstm"))[0]

    # gru takes 1 ms a step, lstm 1.5 ms: at gru's 400 steps the lstm has done 266
    row = compared((0.001, 0.0015))
    assert row["equal steps"] == "gru better" and row["p (equal steps)"] < 0.05
    assert row["slower design's step at equal time"] == 200
    assert row["lstm validation at equal time"] == pytest.approx(0.61)
    assert row["equal time"] == "gru better"
    assert compared((0.001, 0.001))["equal time"] == "no significant difference"
    assert decide.quality([row], "lstm") == {"equal steps": True, "equal time": True}
    assert significantly_better([0.9, 0.91], [0.5, 0.52], higher_is_better=True) == "a"
    assert significantly_better([0.9, 0.91], [0.5, 0.52], higher_is_better=False) == "b"
    assert significantly_better([0.9], [0.5, 0.52], higher_is_better=True) == "too few seeds"


def test_verdicts_are_decided_from_numbers():
    rates = {"init": {"rnn_tanh": -0.3, "gru": -0.01, "lstm": -0.02}, "trained": {}}
    rates["trained"] = {"rnn_tanh": -0.3, "gru": -0.4, "lstm": -0.02}
    solved = [{"cell": "rnn_tanh", "solved": 0}, {"cell": "gru", "solved": 2}]
    assert decide.vanishing(rates, solved, "rnn_tanh") == {
        "slower decay than rnn_tanh (init)": True,
        "slower decay than rnn_tanh (trained)": False,
        "gated designs solve, rnn_tanh does not": True,
    }
    rows = [{"gru_no_reset mean": 1.0, "equal steps": "gru better"}]
    effects = [{"effect": -0.7}, {"effect": -0.4}]
    checks = decide.reset(rows, "gru", "gru_no_reset", effects, effect_at_most=-0.5)
    assert checks == {"gru beats gru_no_reset": True, "r falls at the boundary": False}
    assert decide.reset(rows, "gru", "gru_no_reset", effects, -0.3)["r falls at the boundary"]
    tracking = [
        {"task": "parity", "cell": "gru", "worst_accuracy mean": 0.99},
        {"task": "parity", "cell": "min_gru", "worst_accuracy mean": 0.51},
        {"task": "parity", "cell": "min_gru_signed", "worst_accuracy mean": 0.98},
        {"task": "mod_sum", "cell": "gru", "worst_accuracy mean": 0.97},
        {"task": "mod_sum", "cell": "min_gru_signed", "worst_accuracy mean": 0.96},
    ]
    linear = ["min_gru", "min_gru_signed"]
    assert decide.state_tracking(tracking, "gru", linear, "worst_accuracy", 0.95) == {
        "gru solves every task": True,
        "min_gru fails a task gru solves": True,
        "min_gru_signed fails a task gru solves": False,
    }
    tracking[3]["worst_accuracy mean"] = 0.9  # the GRU misses mod_sum: it solves only parity
    checks = decide.state_tracking(tracking, "gru", linear, "worst_accuracy", 0.95)
    assert not checks["gru solves every task"] and checks["min_gru fails a task gru solves"]


TINY = {
    "name": "tiny_claims",
    "design": "gru",
    "other": "lstm",
    "parameters": {"sizes": [[4, 8]]},
    "throughput": {"configs": ["small"], "rounds": 1},
    "quality": {"sources": [], "timing_rounds": 1},
    "gradflow": {
        "cells": ["rnn_tanh", "gru", "lstm"],
        "baseline": "rnn_tanh",
        "task": "adding",
        "seq_len": 12,
        "hidden": 8,
        "seeds": 2,
        "batch_size": 4,
        "trained_sweep": "vanishing",
    },
    "solved_sources": [],
    "reset": {
        "compare": ["gru_no_reset"],
        "without_reset": "gru_no_reset",
        "sweeps": ["reset_lm"],
        "lm_sweep": "reset_lm",
        "boundaries": {"line end": "\n", "speech end": "\n\n"},
        "offsets": [-2, 3],
        "verdict": {"boundary": "speech end", "lowest_within": [0, 2], "effect_at_most": -0.5},
    },
    "sweeps": {
        name: {
            "method": "grid",
            "seeds": 2,
            "parameters": {
                "task": {"value": task},
                "seq_len": {"value": 12},
                "cell": {"values": cells},
                "hidden": {"value": 8},
                "batch_size": {"value": 8},
                "steps": {"value": 20},
                "log_every": {"value": 10},
                "eval_every": {"value": 10},
                "checkpoint_every": {"value": 20},
            },
            "report": {"metrics": ["loss"], "reference": "gru"},
        }
        for name, task, cells in [
            ("vanishing", "adding", ["rnn_tanh", "gru", "lstm"]),
            ("reset_lm", "lm", ["gru", "gru_no_reset", "lstm"]),
            ("tracking", "parity", ["gru", "min_gru"]),
        ]
    },
    "state_tracking": {  # the end-to-end test points source at its own tracking sweep
        "source": "results/state_tracking",
        "linear": ["min_gru"],
        "metric": "worst_accuracy",
        "solved_at": 0.95,
    },
}


@pytest.mark.slow
def test_claims_command_writes_every_section(tmp_path):
    spec = tmp_path / "tiny.yaml"
    out = tmp_path / "out"
    tiny = TINY | {"state_tracking": TINY["state_tracking"] | {"source": str(out / "tracking")}}
    spec.write_text(yaml.safe_dump(tiny))
    done = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", "claims", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        env={"WANDB_SILENT": "true", **os.environ},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = (out / "report.md").read_text()
    for n in range(1, 7):
        assert f"## {n}. " in report
    assert report.count("| **") >= 6  # six verdicts
    names = ("parameters", "throughput", "quality", "solved", "reset_profile", "state_tracking")
    for name in names:
        assert (out / f"{name}.csv").read_text().count("\n") >= 2
    for name in ("gradflow_init", "gradflow_trained"):
        assert (out / name / "gradflow.png").exists()
    assert (out / "reset_profile.png").exists() and (out / "vanishing" / "report.md").exists()
    quality = (out / "quality.csv").read_text()
    assert "vanishing" in quality and "reset_lm" in quality  # both own sweeps compared


def test_a_bad_experiment_file_is_one_error_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "sweeps": {}}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gru_research.cli",
            "claims",
            str(spec),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "missing sections" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["reset"].update(lm_sweep="nowhere"), "named but not defined"),
        (lambda s: s["reset"]["verdict"].update(boundary="page end"), "must be one of"),
        (lambda s: s["gradflow"].pop("baseline"), "section 'gradflow' needs baseline"),
    ],
)
def test_every_contract_with_the_experiment_file_is_checked(tmp_path, change, message):
    spec = json.loads(json.dumps(TINY))
    change(spec)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message):
        load_experiment(tmp_path / "bad.yaml")
    spec_ok = tmp_path / "ok.yaml"
    spec_ok.write_text(yaml.safe_dump(TINY))
    assert load_experiment(spec_ok)["design"] == "gru"
    shipped = Path(__file__).resolve().parents[1] / "experiments" / "textbook_claims.yaml"
    assert load_experiment(shipped)["reset"]["sweeps"] == ["reset_lm", "reset_selective_copy"]


def test_a_runs_step_is_timed_on_its_own_schedule_warm_up_included(tmp_path):
    # the quality section times each source run's own program: a warm-up longer than the timed
    # chunk (Feng et al.'s Shakespeare warms up for 50 steps) must not be refused
    from small_runs import small_run

    from gru_research.config import TrainConfig
    from gru_research.train import train

    config = TrainConfig(**small_run(steps=20, warmup_steps=12))
    train(config, tmp_path / "run", wandb_mode="disabled", progress=False)
    (seconds,) = measure.seconds_per_step([tmp_path / "run"], rounds=1)
    assert 0 < seconds < 10
