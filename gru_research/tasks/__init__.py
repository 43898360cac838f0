"""Tasks: batches, metrics, baselines and solved criteria (docs/design.md §6).

    task = make_task(TaskConfig(name="copy", seq_len=100))
    inputs, targets = task.sample(task.data, key, batch_size)   # inside jit, batch_size static
    metrics = task.metrics(model_outputs, targets)              # metrics["loss"] is the objective

- copy: Arjovsky, Shah & Bengio (2016), after Hochreiter & Schmidhuber (1997).
- adding: the same sources.
- selective_copy: Gu & Dao (2023), with the generator of Feng et al. (2024).
- parity, mod_sum, cycle_nav: state tracking, trained on short sequences and tested on
  long ones (Beck et al., 2024; Grazzi et al., 2024).
- music: next-frame prediction on the piano rolls of Boulanger-Lewandowski et al. (2012).
- lm: language modelling over characters (TFDS tiny_shakespeare, shipped and offline; another
  TFDS text dataset; a text file; ptb_char) or words (ptb), Penn Treebank read from the data
  root. TensorFlow is imported only when an lm task is made.
"""

from __future__ import annotations

from gru_research.config import STATE_TRACKING, TASKS
from gru_research.tasks.adding import adding_task_batch, make_adding_task
from gru_research.tasks.base import IGNORED_TARGET, Task, TaskConfig, require_positive_int
from gru_research.tasks.copy import copy_task_batch, make_copy_task
from gru_research.tasks.selective_copy import make_selective_copy_task, selective_copy_batch
from gru_research.tasks.state_tracking import make_state_tracking_task, state_tracking_batch


def make_task(config: TaskConfig) -> Task:
    """The `Task` that `config` describes; bad input raises a one-line ValueError."""
    if config.name not in TASKS:
        raise ValueError(f"unknown task {config.name!r}; valid tasks: {', '.join(TASKS)}")
    for field in ("seq_len", "num_tokens", "eval_batches"):
        if not (field == "seq_len" and config.name == "music"):  # music: each sequence's own
            require_positive_int(field, getattr(config, field))
    if config.name == "copy":
        return make_copy_task(config)
    if config.name == "adding":
        return make_adding_task(config)
    if config.name == "selective_copy":
        return make_selective_copy_task(config)
    if config.name in STATE_TRACKING:
        return make_state_tracking_task(config)
    if config.name == "music":
        from gru_research.tasks.music import make_music_task  # reads data; imports scipy

        return make_music_task(config)
    from gru_research.tasks.lm import make_lm_task  # reads data; imports TFDS lazily

    return make_lm_task(config)


__all__ = [
    "IGNORED_TARGET",
    "TASKS",
    "Task",
    "TaskConfig",
    "adding_task_batch",
    "copy_task_batch",
    "make_task",
    "selective_copy_batch",
    "state_tracking_batch",
]
