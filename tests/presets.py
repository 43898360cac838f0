"""Which presets the unit tests cover one by one, and which only the slow (CI) run covers."""

import pytest

from gru_research.gates import PRESETS

CLASSIC = {
    "rnn_tanh", "gru", "gru_reset_before", "gru_no_reset", "mgu", "mgu_flax", "min_gru",
    "min_gru_linear", "gru1", "gru2", "gru3", "lstm", "min_lstm", "lstm_no_input_gate",
    "lstm_no_forget_gate", "lstm_no_output_gate", "lstm_cifg", "lstm_forget_bias_0",
}  # fmt: skip
"""The classic gates and Feng et al.'s minimal RNNs: the designs the experiments in results/
train. The presets added beside them (peepholes, diagonal, block and exponential gating,
learned decays, inputs over time) run their per-preset checks with the slow tests."""

NEW_PRESETS = [name for name in PRESETS if name not in CLASSIC]


def unit_unless_new(name: str, *values):
    """A parametrisation case, marked slow for a preset outside :data:`CLASSIC`."""
    return pytest.param(name, *values, marks=() if name in CLASSIC else pytest.mark.slow)
