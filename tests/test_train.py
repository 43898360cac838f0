"""Training: seeds vmapped equal single runs, resume, divergence, run folders, W&B, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from small_runs import small_run

from gru_research.tracking import offline_run_files, read_offline_history
from gru_research.train import RunError, TrainConfig, rmsprop, train

SMALL = small_run()


def cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", *args], capture_output=True, text=True
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_vmapped_seeds_equal_single_seed_runs(tmp_path):
    config = TrainConfig(**SMALL, seeds=4, steps=20)
    together = train(config, tmp_path / "all", wandb_mode="disabled")
    for i, seed in enumerate(config.seed_list):
        alone = train(
            TrainConfig(**SMALL, seed=seed, seeds=1, steps=20),
            tmp_path / f"s{seed}",
            wandb_mode="disabled",
        )
        for name, values in together["final"].items():
            assert math.isclose(values[i], alone["final"][name][0], rel_tol=1e-4, abs_tol=1e-6)


def test_run_folder_files(tmp_path):
    run = tmp_path / "run"
    summary = train(TrainConfig(**SMALL, seeds=2, steps=20), run, wandb_mode="disabled")
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["cell"] == "gru" and config["package_version"]
    assert "git_commit" in config
    records = read_metrics(run)
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    assert all({"step", "seed", "split", "loss"} <= r.keys() for r in records)
    validation = [r for r in records if r["split"] == "validation"]
    assert all(r["baseline_loss"] == pytest.approx(1 / 6, rel=1e-3) for r in validation)
    assert all(isinstance(r["solved"], bool) for r in validation)
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    assert summary["task"] == "adding" and summary["cell"] == "gru"
    assert summary["seeds"] == [0, 1] and summary["diverged"] == []
    assert len(summary["final"]["loss"]) == 2
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    config = TrainConfig(**SMALL, seeds=2, steps=30)
    whole = train(config, tmp_path / "whole", wandb_mode="disabled")
    run = tmp_path / "killed"
    partial = train(config, run, wandb_mode="disabled", stop_after=15)
    assert partial == {"stopped_at": 15} and not (run / "summary.json").exists()
    elapsed = json.loads((run / "elapsed.json").read_text())
    assert list(elapsed) == ["10"] and elapsed["10"] > 0
    (run / "elapsed.json").write_text(json.dumps({"10": 1000.0}))  # a long first attempt
    resumed = train(config, run, wandb_mode="disabled")
    assert 1000.0 < resumed["wall_time_s"] < 1000.0 + elapsed["10"] + 600  # both attempts
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert sorted(json.loads((run / "elapsed.json").read_text())) == kept == ["20", "30"]
    for name, values in whole["final"].items():
        np.testing.assert_allclose(resumed["final"][name], values, rtol=1e-5, atol=1e-7)
    keys = [(r["step"], r["seed"], r["split"]) for r in read_metrics(run)]
    assert len(keys) == len(set(keys)), "a step was logged twice"
    assert keys == [(r["step"], r["seed"], r["split"]) for r in read_metrics(tmp_path / "whole")]


@pytest.mark.slow
def test_an_error_mid_training_keeps_the_run_folder_and_resumes(tmp_path, monkeypatch):
    """An error raised after training has started removes nothing: the folder, its config and
    its last checkpoint stay, and the same command resumes from them."""
    import gru_research.train as train_module

    config = TrainConfig(**SMALL, steps=30)
    evaluate, calls = train_module.evaluate, []

    def failing_at_step_20(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the validation at step 20, after the checkpoint of step 10
            raise ValueError("a fault mid-training")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", failing_at_step_20)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="mid-training"):
        train(config, run, wandb_mode="disabled")
    assert (run / "config.json").is_file() and (run / "checkpoints" / "10").is_dir()
    assert max(r["step"] for r in read_metrics(run) if r["split"] == "validation") == 10
    monkeypatch.setattr(train_module, "evaluate", evaluate)
    resumed = train(config, run, wandb_mode="disabled")
    attempts = json.loads((run / "config.json").read_text())["attempts"]
    assert [a["from_step"] for a in attempts] == [0, 10]  # each attempt and its commit
    assert all("git_commit" in a and a["date"].endswith("UTC") for a in attempts)
    whole = train(config, tmp_path / "whole", wandb_mode="disabled")
    for name, values in whole["final"].items():
        np.testing.assert_allclose(resumed["final"][name], values, rtol=1e-5, atol=1e-7)
    keys = [(r["step"], r["seed"], r["split"]) for r in read_metrics(run)]
    assert keys == [(r["step"], r["seed"], r["split"]) for r in read_metrics(tmp_path / "whole")]


def test_the_chunk_does_not_depend_on_the_step_count():
    from gru_research.train import chunk_length

    for steps in (1000, 1001, 7):
        config = TrainConfig(steps=steps, log_every=50, eval_every=250, checkpoint_every=500)
        assert chunk_length(config) == 50


@pytest.mark.slow
def test_a_run_of_any_length_ends_with_a_shorter_chunk(tmp_path):
    run = tmp_path / "run"
    summary = train(TrainConfig(**SMALL, steps=13), run, wandb_mode="disabled")
    assert summary["steps"] == 13
    steps = {split: [r["step"] for r in read_metrics(run) if r["split"] == split] for split in
             ("train", "validation", "test")}  # fmt: skip
    assert steps == {"train": [5, 10, 13], "validation": [10, 13], "test": [13]}
    assert (run / "checkpoints" / "13").is_dir()


@pytest.mark.slow
def test_a_folder_without_a_checkpoint_is_replaced_by_another_config(tmp_path, capfd):
    run = tmp_path / "run"
    assert train(TrainConfig(**SMALL, steps=20), run, wandb_mode="disabled", stop_after=5) == {
        "stopped_at": 5
    }
    assert not (run / "checkpoints" / "5").exists()
    summary = train(TrainConfig(**{**SMALL, "hidden": 9}, steps=10), run, wandb_mode="disabled")
    assert summary["steps"] == 10
    assert json.loads((run / "config.json").read_text())["run"]["hidden"] == 9
    lines = [line for line in capfd.readouterr().err.splitlines() if "replacing" in line]
    assert len(lines) == 1 and "no checkpoint yet" in lines[0] and "hidden" in lines[0]


def test_a_program_too_big_for_memory_is_refused_before_any_folder(tmp_path, monkeypatch):
    """The compiled program's memory is checked in set-up: an out-of-memory kill later would
    run no handler, so nothing may be written before it."""
    import gru_research.train as train_module

    monkeypatch.setattr(train_module, "available_memory", lambda: 1024)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="needs .* GiB .* available") as err:
        train(TrainConfig(**SMALL, steps=10), run, wandb_mode="disabled")
    assert len(str(err.value).splitlines()) == 1
    assert not run.exists()


def poison_seed(index: int):
    def transform(state):
        params = jax.tree.map(lambda v: v.at[index].set(jnp.nan), state["params"])
        return {**state, "params": params}

    return transform


@pytest.mark.slow
def test_nan_in_one_seed_marks_only_that_seed(tmp_path):
    config = TrainConfig(**SMALL, seeds=3, steps=20)
    summary = train(config, tmp_path / "run", wandb_mode="disabled", state_transform=poison_seed(1))
    assert summary["diverged"] == [1]
    assert summary["final"]["loss"][1] is None
    assert all(math.isfinite(summary["final"]["loss"][i]) for i in (0, 2))
    healthy = train(TrainConfig(**SMALL, seeds=3, steps=20), tmp_path / "ok", wandb_mode="disabled")
    for i in (0, 2):
        assert summary["final"]["loss"][i] == pytest.approx(healthy["final"]["loss"][i], rel=1e-5)


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_logged_losses(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**SMALL, seeds=2, steps=20), run, wandb_mode="offline")
    files = offline_run_files(run)
    assert len(files) == 2
    records = read_metrics(run)
    config = json.loads((run / "config.json").read_text())
    for seed in (0, 1):
        history = read_offline_history(files[f"{config['wandb_id']}-s{seed}"])
        logged = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
        expected = {
            r["step"]: r["loss"] for r in records if r["seed"] == seed and r["split"] == "train"
        }
        assert logged == pytest.approx(expected)


@pytest.mark.slow
def test_a_changed_config_in_the_same_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(**SMALL, steps=10), run, wandb_mode="disabled")
    with pytest.raises(RunError, match="different config"):
        train(TrainConfig(**{**SMALL, "hidden": 9}, steps=10), run, wandb_mode="disabled")


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(**SMALL, steps=30)
    train(config, run, wandb_mode="disabled", stop_after=10)
    for f in (run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    result = cli("train", *args_of(config), "--out", str(run), "--wandb", "disabled")
    assert result.returncode != 0
    assert "corrupt or mismatched checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def args_of(config: TrainConfig) -> list[str]:
    out = []
    for key, value in vars(config).items():
        if value is not None:
            out.append(f"--{key.replace('_', '-')}={value}")
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "sorting"], "invalid choice: 'sorting'"),
        (["--cell", "grux"], "invalid choice: 'grux'"),
        (["--hidden", "0"], "hidden must be a positive integer"),
        (["--seq-len", "-3"], "seq_len must be a positive integer"),
        (["--task", "selective_copy", "--seq-len", "4", "--num-tokens", "16"], "selective"),
        (["--task", "lm", "--text-file", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(tmp_path, args, message):
    run = tmp_path / "run"
    result = cli("train", *args, "--steps", "5", "--out", str(run), "--wandb", "disabled")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not run.exists()


@pytest.mark.slow
def test_adding_T50_gru_4_seeds_learns_through_the_cli(tmp_path):
    result = cli(
        "train",
        "--task",
        "adding",
        "--cell",
        "gru",
        "--seeds",
        "4",
        "--steps",
        "1500",
        "--seq-len",
        "50",
        "--hidden",
        "64",
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--eval-every",
        "500",
        "--out",
        str(tmp_path / "run"),
        "--wandb",
        "disabled",
        check=True,
    )
    final = json.loads(result.stdout.strip().splitlines()[-1])["final"]["loss"]
    assert all(v < 0.01 for v in final), final


@pytest.mark.slow
def test_copy_T20_gru_4_seeds_learns_through_the_cli(tmp_path):
    result = cli(
        "train",
        "--task",
        "copy",
        "--cell",
        "gru",
        "--seeds",
        "4",
        "--steps",
        "1750",  # every seed under half the baseline by 1,750 (about 0.21–0.23 of 0.26)
        "--seq-len",
        "20",
        "--hidden",
        "64",
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--eval-every",
        "500",
        "--out",
        str(tmp_path / "run"),
        "--wandb",
        "disabled",
        check=True,
    )
    final = json.loads(result.stdout.strip().splitlines()[-1])["final"]["loss"]
    baseline = 10 * math.log(8) / 40
    assert all(v < baseline / 2 for v in final), final


@pytest.mark.slow
def test_lm_on_tfds_tiny_shakespeare_learns_offline(tmp_path):
    """The shipped copy of tiny_shakespeare, through the real TFDS builder, with no network."""
    cli(
        "train",
        "--task",
        "lm",
        "--cell",
        "gru",
        "--seeds",
        "2",
        "--steps",
        "300",
        "--seq-len",
        "64",
        "--hidden",
        "128",
        "--batch-size",
        "32",
        "--lr",
        "3e-3",
        "--eval-every",
        "300",
        "--tfds-data-dir",
        str(tmp_path / "tfds"),
        "--out",
        str(tmp_path / "run"),
        "--wandb",
        "disabled",
        check=True,
    )
    records = read_metrics(tmp_path / "run")
    validation = [r for r in records if r["split"] == "validation"]
    assert len(validation) == 2
    assert all(r["bpc"] < 3.0 for r in validation), validation
    assert all(r["bits_per_token"] == r["bpc"] for r in validation)
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-4) for r in validation)


def test_lm_on_a_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    summary = train(
        TrainConfig(
            task="lm",
            text_file=str(text),
            seq_len=16,
            hidden=16,
            batch_size=8,
            steps=20,
            log_every=10,
            eval_every=20,
            checkpoint_every=20,
        ),
        tmp_path / "run",
        wandb_mode="disabled",
    )
    assert {"loss", "bpc", "perplexity"} <= summary["final"].keys()
    assert summary["final"]["bpc"][0] == pytest.approx(summary["final"]["loss"][0] / math.log(2))


def _rmsprop_steps(optimizer, grads: list[np.ndarray]) -> tuple[list[np.ndarray], object]:
    params = {"w": jnp.zeros(grads[0].shape, jnp.float32)}
    state, steps = optimizer.init(params), []
    update = jax.jit(optimizer.update)
    for g in grads:
        step, state = update({"w": jnp.asarray(g, jnp.float32)}, state)
        steps.append(np.asarray(step["w"]))
    return steps, state


def test_rmsprop_is_the_papers_equations():
    """r starts at 1e-3, r <- 0.9 r + 0.1 g^2, the step is -lr g / sqrt(r) (Arjovsky et al.,
    2016), checked against NumPy in float64."""
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(6) * 10.0 ** rng.uniform(-4, 0) for _ in range(30)]
    steps, _ = _rmsprop_steps(rmsprop(1e-3, 0.9), grads)
    r = np.full(6, 1e-3)
    for g, step in zip(grads, steps, strict=True):
        r = 0.9 * r + 0.1 * g**2
        np.testing.assert_allclose(step, -1e-3 * g / np.sqrt(r), rtol=1e-5)


def test_rmsprop_equals_optax_without_epsilon_bit_for_bit_while_the_accumulator_is_normal():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(64) * 10.0 ** rng.uniform(-12, 1) for _ in range(40)]
    ours, our_state = _rmsprop_steps(rmsprop(1e-3, 0.9), grads)
    theirs, their_state = _rmsprop_steps(
        optax.rmsprop(1e-3, decay=0.9, eps=0.0, initial_scale=1e-3), grads
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(our_state) == jax.tree.structure(their_state)
    for a, b in zip(jax.tree.leaves(our_state), jax.tree.leaves(their_state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rmsprop_survives_an_accumulator_that_decays_out_of_float32():
    """A gradient too small to square in float32 for 800 steps takes the accumulator from 1e-3
    below the smallest normal number (at step 764), where it is flushed to zero: optax with no
    epsilon steps 0/0 there, ours stays finite."""
    grads = [np.full(2, 1e-20)] * 800
    ours, _ = _rmsprop_steps(rmsprop(1e-3, 0.9), grads)
    theirs, _ = _rmsprop_steps(optax.rmsprop(1e-3, decay=0.9, eps=0.0, initial_scale=1e-3), grads)
    assert not np.isfinite(theirs[-1]).all()  # what the paper's optimiser does in float32
    assert all(np.isfinite(step).all() for step in ours)
    assert np.abs(ours[-1]).max() <= 1e-3  # at most lr: |g| / sqrt(tiny) < 1 here
