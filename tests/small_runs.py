"""The small training runs the tests share: adding at T = 10 with 8 units, seconds to train."""

SMALL_RUN = dict(
    task="adding",
    cell="gru",
    seq_len=10,
    hidden=8,
    batch_size=8,
    log_every=5,
    eval_every=10,
    checkpoint_every=10,
    eval_batches=2,
)


def small_run(**changes) -> dict:
    """The keyword arguments of a small ``TrainConfig``, with ``changes``."""
    return SMALL_RUN | changes


def sweep_parameters(run: dict, varied: tuple[str, ...] = ("cell",)) -> dict:
    """A sweep's ``parameters`` fixing every field of ``run`` but those the sweep varies."""
    return {k: {"value": v} for k, v in run.items() if k not in varied}
