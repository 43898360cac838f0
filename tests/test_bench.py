"""The benchmark harness runs every implementation on the same step and reports ratios."""

import pytest

from gru_research import bench

TINY = bench.BenchConfig("tiny", batch=2, length=6, embed=4, hidden=8, vocab=7)


@pytest.mark.slow
def test_every_implementation_trains_and_reports():
    timings = bench.compare(TINY, rounds=1)
    rows = bench.timing_rows(timings)
    names = [row.split("|")[3].strip() for row in rows if row.split("|")[2].strip() != "min_gru"]
    assert "gru-research gru" in names and "flax nn.RNN(GRUCell)" in names
    assert "flax nn.RNN(OptimizedLSTMCell)" in names and "flax nn.RNN(MGUCell)" in names
    assert {t.name for t in timings if t.group == "min_gru"} == {
        "gru-research min_gru (sequential scan)",
        "gru-research min_gru (parallel scan)",
        "gru-research min_gru",
        "gru-research gru",
    }
    assert len(names) == len(set(names))
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0


@pytest.mark.slow
def test_seed_scaling_and_targets():
    speed_ups = bench.seed_scaling(TINY, [1, 2, 8], rounds=1)
    assert speed_ups[1] == 1.0 and speed_ups[2] > 0 and speed_ups[8] > 0
    timings = [
        bench.Timing("small", "gru", "gru-research gru", 1.0, 100, 1.0, None),
        bench.Timing("small", "gru", "flax nn.RNN(GRUCell)", 2.0, 100, 1.0, None),
    ]
    rows = bench.targets(timings, speed_ups, None, compile_2_layers=3.0)
    flax_row = next(r for r in rows if "small: gru-research gru vs flax" in r)
    assert "2.00x" in flax_row and "| met |" in flax_row
    assert any("torch nn.GRU" in r and "not measured" in r for r in rows)
    assert any("compile time" in r and "met" in r for r in rows)


@pytest.mark.slow
def test_length_scaling_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(
        bench, "LENGTH_CURVES", {k: v for k, v in bench.LENGTH_CURVES.items() if "torch" not in k}
    )
    curves = bench.length_scaling([4, 8], rounds=1)
    assert set(curves["gru-research gru"]) == {4, 8}
    bench.plot(curves, {1: 1.0, 2: 1.5}, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_anchor_when_installed(cell):
    pytest.importorskip("torch")
    step = bench.torch_anchor(TINY, cell)
    step.run()
    assert step.name.startswith("torch nn.")


@pytest.mark.slow
def test_profile_splits_the_step_into_phases():
    rows = bench.profile(TINY, rounds=1)
    assert [r.split("|")[2].strip() for r in rows] == ["gru-research gru", "flax nn.RNN(GRUCell)"]
    for row in rows:
        assert float(row.split("|")[-2]) > 0


@pytest.mark.slow
def test_feng_speed_claim_table_and_verdicts():
    rows = bench.speed_claim([4, 8], batch=2, rounds=1)
    assert [r["length"] for r in rows] == [4, 8]
    assert all(r["gru s"] > 0 and r["min_gru parallel bytes"] > 0 for r in rows)
    text = bench.speed_claim_report(rows, batch=2, rounds=1, command="cmd")
    assert "| 4 |" in text and "| 8 |" in text and "**not measured**" in text
    fake = [
        {"length": t, "gru s": g, "min_gru parallel s": 1.0, "min_gru sequential s": 1.0}
        | {"gru bytes": 100, "min_gru parallel bytes": 150, "min_gru sequential bytes": 90}
        for t, g in [(4, 2.0), (8, 3.0)]
    ]
    verdicts = bench.speed_claim_report(fake, batch=2, rounds=1, command="cmd")
    assert verdicts.count("**held**") == 2 and "2.00×, 3.00×" in verdicts
