"""The benchmark harness runs every implementation on the same step and reports ratios."""

import pytest

from gru_research import bench

TINY = bench.BenchConfig("tiny", batch=2, length=6, embed=4, hidden=8, vocab=7)


def test_every_implementation_trains_and_reports():
    rows = bench.compare(TINY, rounds=1)
    names = [row.split("|")[3].strip() for row in rows]
    assert "gru-research gru" in names and "flax nn.RNN(GRUCell)" in names
    assert "flax nn.RNN(OptimizedLSTMCell)" in names and "flax nn.RNN(MGUCell)" in names
    assert {
        "gru-research min_gru (sequential scan)",
        "gru-research min_gru (parallel scan)",
        "gru-research min_gru",
    } <= set(names)
    assert len(names) == len(set(names))
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0


def test_seed_scaling_row():
    row = bench.seed_scaling(TINY, seeds=2, rounds=1)
    assert float(row.split("|")[-2]) > 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_anchor_when_installed(cell):
    pytest.importorskip("torch")
    step = bench.torch_anchor(TINY, cell)
    step.run()
    assert step.name.startswith("torch nn.")
