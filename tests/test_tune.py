"""Tuned tables (each design at its best validation value of a parameter) and claims about
learning curves, on run folders and curves of known values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from gru_research.report import (
    check_curve,
    convergence,
    convergence_section,
    sizes_line,
    write_report,
)
from gru_research.sweep import check_sweep, load_sweep
from gru_research.tables import (
    Entry,
    Table,
    Tuning,
    build_table,
    load_runs,
    to_markdown,
    write_table,
)

LRS = (1e-3, 3e-3, 1e-2, 3e-2)
# cell -> lr -> (final validation loss per seed, test loss per seed)
KNOWN = {
    "gru": {
        1e-3: ([0.30, 0.32], [0.31, 0.33]),
        3e-3: ([0.10, 0.12], [0.11, 0.13]),  # gru's best on validation
        1e-2: ([0.20, 0.22], [0.05, 0.06]),  # best on test: never chosen, test is not looked at
        3e-2: ([0.50, 0.52], [0.51, 0.53]),
    },
    "lstm": {
        1e-3: ([0.40, 0.41], [0.40, 0.42]),
        3e-3: ([0.35, 0.36], [0.36, 0.37]),
        1e-2: ([0.25, 0.26], [0.24, 0.27]),  # lstm's best
        3e-2: ([0.90, 0.95], [0.91, 0.96]),
    },
}


def fake_run(root: Path, cell: str, lr: float, valid: list, test: list, diverged=()) -> Path:
    folder = root / f"cell={cell}" / "values" / f"lr={lr}"
    folder.mkdir(parents=True)
    config = {"task": "copy", "cell": cell, "lr": lr, "seq_len": 20, "seeds": len(test)}
    (folder / "config.json").write_text(json.dumps({"run": config}))
    seeds = list(range(len(test)))
    final = [None if s in diverged else v for s, v in zip(seeds, test, strict=True)]
    summary = {
        "task": "copy",
        "cell": cell,
        "seeds": seeds,
        "diverged": list(diverged),
        "final": {"loss": final},
        "baseline": {"loss": 10 * math.log(8) / 40},
        "wall_time_s": 1.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    records = [
        {"step": step, "seed": s, "split": "validation", "loss": v + (1.0 if step == 50 else 0)}
        for step in (50, 100)
        for s, v in zip(seeds, valid, strict=True)
    ] + [
        {"step": 100, "seed": s, "split": "test", "loss": v}
        for s, v in zip(seeds, test, strict=True)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def known_runs(root: Path) -> list:
    for cell, by_lr in KNOWN.items():
        for lr, (valid, test) in by_lr.items():
            fake_run(root, cell, lr, valid, test)
    return load_runs(root)


def test_the_tuned_table_reports_test_at_the_best_validation_value(tmp_path):
    runs = known_runs(tmp_path)
    table = build_table(runs, "loss", reference="gru", tuning=Tuning("lr"))
    assert table.column_keys == ["task"]  # lr is collapsed, not a column
    gru = table.entries[(("gru",), ("copy",))]
    lstm = table.entries[(("lstm",), ("copy",))]
    assert gru.values == [0.11, 0.13] and gru.tuned == "lr 0.003"
    assert lstm.values == [0.24, 0.27] and lstm.tuned == "lr 0.01"
    assert lstm.p_value == pytest.approx(
        stats.ttest_ind([0.24, 0.27], [0.11, 0.13], equal_var=False).pvalue
    )
    text = to_markdown(table)
    assert "0.1200 ± 0.014** (n=2, lr 0.003)" in text and "Tuned: each cell at the `lr`" in text


def test_a_diverged_seed_ranks_last_and_ties_go_to_the_smaller_value(tmp_path):
    fake_run(tmp_path, "gru", 1e-3, [0.2, 0.2], [0.3, 0.3])
    fake_run(tmp_path, "gru", 3e-3, [0.2, 0.2], [0.4, 0.4])  # a tie: the smaller value wins
    fake_run(tmp_path, "gru", 1e-2, [0.01, 0.01], [0.01, 0.01], diverged=[1])  # best, diverged
    table = build_table(load_runs(tmp_path), "loss", tuning=Tuning("lr"))
    entry = table.entries[(("gru",), ("copy",))]
    assert entry.tuned == "lr 0.001" and entry.values == [0.3, 0.3]


def test_the_report_holds_the_tuned_table_its_grid_and_claims_on_the_tuned_one(tmp_path):
    known_runs(tmp_path)
    sweep = {
        "name": "tuned",
        "parameters": {"cell": {"values": ["gru", "lstm"]}, "lr": {"values": list(LRS)}},
        "report": {
            "reference": "gru",
            "tune": {"parameter": "lr", "on": "validation", "metric": "loss"},
            "paper": [{"cell": "gru", "value": 0.1, "source": "made up"}],
            "claims": [
                {"text": "gru under 0.15", "where": {"cell": "gru"}, "below": 0.15},
                {"text": "lstm under 0.2", "where": {"cell": "lstm"}, "below": 0.2},
            ],
        },
    }
    report = write_report(tmp_path, check_sweep(sweep, "tuned"), command="cmd", wall_time_s=1)
    text = report.read_text()
    tuned = text.split("## Final test loss", 1)[1].split("##", 1)[0]
    assert "(n=2, lr 0.003) [paper: 0.1]" in tuned
    assert "## The whole grid over lr (descriptive)" in text
    assert "- sizes: equal hidden sizes, hidden = 64" in text
    assert (tmp_path / "table_loss_grid.md").exists()
    grid = (tmp_path / "table_loss_grid.md").read_text()
    assert "copy lr=0.03" in grid and "0.05500 ± 0.0071" in grid  # every value, untuned
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if "under 0." in line}
    assert "**held**" in lines["gru under 0.15"] and "0.12 vs 0.15" in lines["gru under 0.15"]
    assert "**not held**" in lines["lstm under 0.2"]  # 0.255 at its tuned lr


def test_write_table_writes_the_grid_beside_the_tuned_table(tmp_path):
    known_runs(tmp_path)
    write_table(tmp_path, "loss", tuning=Tuning("lr"))
    assert "lr 0.003" in (tmp_path / "table_loss.md").read_text()
    assert (tmp_path / "table_loss_grid.csv").read_text().count("\n") == 1 + 8


@pytest.mark.parametrize(
    ("tune", "words"),
    [
        (
            {"parameter": "hidden"},
            "parameter 'hidden' is not varied by the sweep; varied: cell, lr",
        ),
        ({"parameter": "lr", "metric": "perplexityx"}, "unknown metric 'perplexityx' to tune on"),
        ({"parameter": "lr", "on": "test"}, "unknown split 'test' to tune on; valid: validation"),
        ({"parameter": "lr", "goal": "max"}, "unknown keys ['goal']"),
        ("lr", "must be a mapping with a 'parameter'"),
    ],
)
def test_a_bad_tune_entry_is_one_line(tune, words):
    sweep = {
        "parameters": {"cell": {"values": ["gru"]}, "lr": {"values": list(LRS)}},
        "report": {"tune": tune},
    }
    with pytest.raises(ValueError, match="^[^\n]*$") as err:
        check_sweep(yaml.safe_load(yaml.safe_dump(sweep)), "s.yaml")
    assert words in str(err.value) and str(err.value).startswith("s.yaml: report: tune: ")


def test_a_tune_entry_written_by_hand_reads_on_as_a_key(tmp_path):
    """YAML 1.1 reads a bare ``on`` as True; a sweep file reads it as the key ``on``."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "parameters:\n  cell: {values: [gru]}\n  lr: {values: [0.001, 0.01]}\n"
        "report:\n  tune: {parameter: lr, on: validation, metric: loss}\n"
    )
    assert load_sweep(path)["report"]["tune"] == {
        "parameter": "lr",
        "on": "validation",
        "metric": "loss",
    }
    path.write_text(path.read_text().replace("on: validation", "on: test"))
    with pytest.raises(ValueError, match="unknown split 'test' to tune on"):
        load_sweep(path)


STEPS = np.array([1000, 2000, 3000, 4000, 5000])
CURVE = np.array([0.50, 0.49, 0.30, 0.05, 0.008])  # a loss leaving a baseline of 0.5 at 3000


@pytest.mark.parametrize(
    ("kind", "spec", "held", "figure"),
    [
        ("by_step", {"step": 5000, "below": 0.01}, True, "0.008 at step 5000"),
        ("by_step", {"step": 4500, "below": 0.01}, False, "0.05 at step 4000"),
        ("by_step", {"step": 500, "below": 1.0}, False, "no record by step 500"),
        ("leaves_baseline", {"ratio": 0.97, "after_step": 2000}, True, "at step 3000"),
        ("leaves_baseline", {"ratio": 0.97, "after_step": 3000}, False, "at step 3000"),
        ("leaves_baseline", {"ratio": 0.97, "before_step": 3000}, False, "at step 3000"),
        ("leaves_baseline", {"ratio": 0.97, "before_step": 3001}, True, "at step 3000"),
        ("leaves_baseline", {"ratio": 0.001}, False, "never below 0.001× baseline"),
    ],
)
def test_curve_claims_decide_on_known_curves(kind, spec, held, figure):
    ok, note = check_curve(kind, spec, STEPS, CURVE, baseline=0.5, higher=False)
    assert ok is held and figure in note


def test_leaving_the_baseline_upward_for_accuracy():
    accuracy = np.array([0.10, 0.11, 0.50, 0.90, 0.99])
    spec = {"ratio": 2.0, "after_step": 2000, "before_step": 4000}
    assert check_curve("leaves_baseline", spec, STEPS, accuracy, baseline=0.1, higher=True)[0]


def test_the_report_checks_curve_claims_on_the_tuned_runs(tmp_path):
    known_runs(tmp_path)  # validation at step 50 is the final value + 1, at step 100 the final
    sweep = {
        "name": "curves",
        "parameters": {"cell": {"values": ["gru", "lstm"]}, "lr": {"values": list(LRS)}},
        "report": {
            "tune": {"parameter": "lr"},
            "claims": [
                {
                    "text": "gru by 100",
                    "where": {"cell": "gru"},
                    "by_step": {"step": 100, "below": 0.2},
                },
                {
                    "text": "gru by 50",
                    "where": {"cell": "gru"},
                    "by_step": {"step": 50, "below": 0.2},
                },
                {
                    "text": "lstm leaves",
                    "where": {"cell": "lstm"},
                    "leaves_baseline": {"ratio": 1.0, "after_step": 50},
                },
            ],
        },
    }
    text = write_report(tmp_path, check_sweep(sweep, "c"), command="c", wall_time_s=1).read_text()
    lines = {
        line.split("|")[1].strip(): line
        for line in text.splitlines()
        if "| gru by" in line or "| lstm leaves" in line
    }
    assert "**held**" in lines["gru by 100"] and "0.11 at step 100" in lines["gru by 100"]
    assert "**not held**" in lines["gru by 50"] and "1.11 at step 50" in lines["gru by 50"]
    # lstm at lr 0.01: 1.255 at step 50, 0.255 at 100, against a baseline of 0.52
    assert "**held**" in lines["lstm leaves"] and "at step 100" in lines["lstm leaves"]


def test_a_report_says_whether_sizes_were_matched_by_parameters():
    def line(parameters: dict, **rest) -> str:
        return sizes_line({"parameters": parameters, **rest})

    budget = line({"param_budget": {"value": 6500}, "hidden": {"value": 40}})
    assert budget.startswith("sizes: parameter-matched") and budget.endswith("= 6500")
    assert line({"hidden": {"values": [32, 64]}}) == "sizes: equal hidden sizes, hidden = [32, 64]"
    papers = line(
        {"size_like": {"value": "lstm"}, "hidden": {"value": 40}},
        per_cell={"rnn_tanh": {"hidden": 80, "size_like": None}},
    )
    assert papers == (
        "sizes: parameter-matched, each design at the largest hidden size within the "
        "parameters of lstm at hidden = 40; per cell: rnn_tanh hidden=80, size_like=None"
    )


RECORD_STEPS = np.arange(1, 11) * 100  # ten validation records


@pytest.mark.parametrize(
    "curve, higher, converged, flat_from",
    [
        # flat from step 500 on: converged, and flat where it reached the final value's band
        ([5, 4, 3, 2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], False, True, 500),
        # still falling by 10 % a record over the last 20 %: not converged, flat only at the end
        ([2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.9, 0.81, 0.73, 0.66], False, False, 1000),
        # falling by 0.5 % over the last 20 %: under 1 %, converged
        ([2, 1.5, 1.2, 1.1, 1.05, 1.02, 1.008, 1.005, 1.003, 1.0], False, True, 700),
        # accuracy still rising: not converged; rising no more: converged
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], True, False, 1000),
        ([0.1, 0.5, 0.9, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99], True, True, 400),
    ],
)
def test_convergence_on_known_curves(curve, higher, converged, flat_from):
    found = convergence(RECORD_STEPS, np.array([curve, curve]), higher)
    assert found.converged is converged and found.flat_from == flat_from
    assert found.steps == 1000 and found.tolerance == pytest.approx(0.01 * curve[-1])


def test_convergence_allows_one_seed_std_and_needs_five_records():
    # the mean falls 4 % over the last 20 %, within the seeds' spread at the last record
    seeds = np.array([[1.0] * 8 + [1.04, 1.0 - 0.1], [1.0] * 8 + [1.04, 1.0 + 0.1]])
    found = convergence(RECORD_STEPS, seeds, higher=False)
    assert found.converged and found.tolerance == pytest.approx(np.std([0.9, 1.1], ddof=1))
    assert convergence(RECORD_STEPS[:4], seeds[:, :4], higher=False) is None


def test_the_report_says_which_entries_converged(tmp_path):
    known_runs(tmp_path)  # two validation records each: too few to tell
    for step in (150, 200, 250):  # gru at lr 0.003 gets three more, still falling by 50 %
        records = [
            {"step": step, "seed": s, "split": "validation", "loss": 0.11 * 100 / step}
            for s in (0, 1)
        ]
        path = tmp_path / "cell=gru" / "values" / "lr=0.003" / "metrics.jsonl"
        path.write_text(path.read_text() + "".join(json.dumps(r) + "\n" for r in records))
    sweep = {
        "name": "converged",
        "parameters": {"cell": {"values": ["gru", "lstm"]}, "lr": {"values": list(LRS)}},
        "report": {"tune": {"parameter": "lr"}},
    }
    text = write_report(tmp_path, check_sweep(sweep, "c"), command="c", wall_time_s=1).read_text()
    section = text.split("## Convergence (validation loss)", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| gru")]
    assert len(rows) == 1 and "| 250 |" in rows[0] and "**no** (stopped at the step cap)" in rows[0]
    assert "| lstm" not in section  # two records: no verdict


def test_the_convergence_table_follows_the_tables_order_whatever_its_keys():
    # a column key may be None beside strings (a parameter one task does not read)
    flat = (RECORD_STEPS, np.ones((2, 10)))
    columns = [(None,), ("jsb",)]
    table = Table("loss", [("gru",)], ["cell"], columns, ["dataset"])
    table.entries = {(("gru",), c): Entry([1.0, 1.0], 0) for c in columns}
    lines = convergence_section(table, {c: {("gru",): flat} for c in columns})
    rows = [line for line in lines[-1].splitlines() if line.startswith("| gru")]
    assert [r.split("|")[1].strip() for r in rows] == ["gru @ dataset=None", "gru @ dataset=jsb"]
