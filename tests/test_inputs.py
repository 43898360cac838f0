"""Bad input: one line naming the valid choices or domain, exit 2, nothing left behind, all
checked before any work starts (options, output folders, sweep files, tables, corrupt files)."""

import json
import os
import resource
import shutil
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gru_research import tracking
from gru_research.cli import main
from gru_research.config import TrainConfig
from gru_research.tracking import read_json, write_atomic

TINY_ARGS = [
    "--task=adding",
    "--seq-len=4",
    "--hidden=4",
    "--batch-size=2",
    "--steps=2",
    "--log-every=1",
    "--eval-every=2",
    "--checkpoint-every=2",
    "--eval-batches=1",
    "--wandb=disabled",
]
TINY_SWEEP = {
    "task": {"value": "adding"},
    "seq_len": {"value": 4},
    "hidden": {"value": 4},
    "steps": {"value": 2},
    "batch_size": {"value": 2},
    "log_every": {"value": 1},
    "eval_every": {"value": 2},
    "checkpoint_every": {"value": 2},
    "eval_batches": {"value": 1},
}
IS_ROOT = os.geteuid() == 0


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """``gru-research ARGS`` in this process: the exit status and the lines on stderr."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def write_sweep(path: Path, parameters: dict, **extra) -> Path:
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": parameters, **extra}))
    return path


# ---------------------------------------------------------------------------------------------
# every option against its type and its domain


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("clip_norm", -1.0, "clip_norm must be a finite number > 0 (0: off)"),
        ("clip_value", -1.0, "clip_value must be a finite number > 0 (0: off)"),
        ("clip_norm", float("inf"), "clip_norm must be a finite number > 0"),
        ("lr", float("nan"), "lr must be a finite number > 0"),
        ("lr", float("inf"), "lr must be a finite number > 0"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
        ("warmup_steps", 1000, "warmup_steps must be below steps (1000)"),
        ("weight_decay", -0.1, "weight_decay must be a finite number >= 0"),
        ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0"),
        ("rms_decay", 1.0, "rms_decay must be in (0, 1)"),
        ("rms_decay", 0.0, "rms_decay must be in (0, 1)"),
        ("dropout", 1.0, "dropout must be in [0, 1)"),
        ("dropout", -0.1, "dropout must be in [0, 1)"),
        ("recurrent_dropout", 1.5, "recurrent_dropout must be in [0, 1)"),
        ("lr_decay", 0.0, "lr_decay must be in (0, 1]"),
        ("lr_decay", 1.5, "lr_decay must be in (0, 1]"),
        ("lr_decay_after", -1, "lr_decay_after must be an integer >= 0"),
        ("init_scale", float("inf"), "init_scale must be a finite number > 0"),
        ("init_scale", -0.1, "init_scale must be a finite number > 0"),
        ("gate_bias", float("nan"), "gate_bias must be a finite number"),
        ("chrono_t_max", 2.0, "chrono_t_max must be a finite number > 2"),
        ("chrono_t_max", float("inf"), "chrono_t_max must be a finite number > 2"),
        ("num_tokens", 0, "num_tokens must be a positive integer"),
        ("seed", -1, "seed must be an integer >= 0"),
        ("epochs", 0, "epochs must be a positive integer"),
    ],
)
def test_a_value_outside_its_domain_is_one_line_naming_it(option, value, words):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{option: value})
    assert str(err.value).startswith(words) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("steps", "ten", "steps must be an integer, got 'ten'"),
        ("steps", True, "steps must be an integer, got True"),
        ("steps", 10.0, "steps must be an integer, got 10.0"),
        ("seq_len", "5", "seq_len must be an integer or null, got '5'"),
        ("lr", "fast", "lr must be a number, got 'fast'"),
        ("clip_norm", [1.0], "clip_norm must be a number or null, got [1.0]"),
        ("stateful", "yes", "stateful must be true or false, got 'yes'"),
        ("cell", 3, "cell must be a string, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_field_and_the_type(option, value, words):
    with pytest.raises(ValueError, match="^" + words.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**{option: value})


def test_an_integer_is_a_number_and_zero_clipping_is_off():
    config = TrainConfig(lr=1, clip_norm=0, clip_value=0.0)
    assert config.lr == 1 and config.clip_norm is None and config.clip_value is None


def test_every_numeric_option_has_a_domain():
    hints = typing.get_type_hints(TrainConfig)
    numeric = [
        f.name
        for f in fields(TrainConfig)
        if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))
    ]
    domains = {f.name: f.metadata.get("domain") for f in fields(TrainConfig)}
    assert len(numeric) > 20 and [name for name in numeric if domains[name] is None] == []


@pytest.mark.parametrize(
    "args, words",
    [
        (["--clip-norm", "-1"], "clip_norm must be a finite number > 0"),
        (["--clip-value", "-1"], "clip_value must be a finite number > 0"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--warmup-steps", "-1"], "warmup_steps must be an integer >= 0, got -1"),
        (["--dropout", "1"], "dropout must be in [0, 1)"),
    ],
)
def test_the_cli_refuses_a_value_outside_its_domain_and_leaves_no_folder(
    tmp_path, capsys, args, words
):
    code, lines = cli(capsys, "train", *TINY_ARGS, *args, "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert tree(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# output folders: checked before any work, nothing left behind


def test_check_output_folder_tries_without_leaving_anything(tmp_path):
    tracking.check_output_folder(tmp_path / "a" / "b" / "run")
    tracking.check_output_folder(tmp_path)
    assert tree(tmp_path) == []


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize(
    "where, words",
    [("file", "file: {root}/file is a file"), ("file/run", "run: {root}/file is a file")],
)
def test_an_output_folder_at_or_inside_a_file_is_one_line(tmp_path, capsys, command, where, words):
    (tmp_path / "file").write_text("not a folder")
    sweep = write_sweep(tmp_path / "s.yaml", TINY_SWEEP)
    before = tree(tmp_path)
    args = TINY_ARGS if command == "train" else [str(sweep), "--wandb=disabled"]
    code, lines = cli(capsys, command, *args, "--out", str(tmp_path / where))
    assert code == 2 and len(lines) == 1, lines
    assert "cannot write the output folder" in lines[0]
    assert lines[0].endswith(words.format(root=tmp_path)), lines
    assert tree(tmp_path) == before and (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.skipif(
    IS_ROOT,
    reason="root ignores file permissions: a chmod-ed folder stays "
    "writable to it (test_a_read_only_mount_is_one_line covers root)",
)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_folder_the_user_cannot_write_is_one_line(tmp_path, capsys, command):
    sweep = write_sweep(tmp_path / "s.yaml", TINY_SWEEP)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        args = TINY_ARGS if command == "train" else [str(sweep), "--wandb=disabled"]
        code, lines = cli(capsys, command, *args, "--out", str(locked / "run"))
    finally:
        locked.chmod(0o755)
    assert code == 2 and len(lines) == 1 and "Permission denied" in lines[0], lines
    assert list(locked.iterdir()) == []


def read_only_mount(folder: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a read-only file system mounted on ``folder``, in a private mount
    namespace (gone when the command ends)."""
    script = 'mount -t tmpfs -o ro none "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(folder)]
        + command,
        capture_output=True,
        text=True,
        timeout=120,
    )


def can_mount_read_only(folder: Path) -> bool:
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    return read_only_mount(folder, ["true"]).returncode == 0


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_read_only_mount_is_one_line(tmp_path, command):
    folder = tmp_path / "mnt"
    folder.mkdir()
    if not can_mount_read_only(folder):
        pytest.skip("mounting a read-only file system needs root and unshare(1)")
    sweep = write_sweep(tmp_path / "s.yaml", TINY_SWEEP)
    args = TINY_ARGS if command == "train" else [str(sweep), "--wandb=disabled"]
    result = read_only_mount(
        folder,
        [sys.executable, "-m", "gru_research.cli", command, *args, "--out", f"{folder}/run"],
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "cannot write the output folder" in lines[0] and "Read-only file system" in lines[0]


# ---------------------------------------------------------------------------------------------
# an impossible size: refused before any folder


def limit_address_space() -> None:
    """Should the memory check ever miss, the run fails to allocate instead of exhausting the
    machine."""
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))


def test_an_impossible_size_fails_before_any_folder(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", "train", "--task", "adding"]
        + ["--seq-len", "10000000", "--steps", "5", "--wandb", "disabled", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_address_space,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "GiB" in lines[0] and "--seq-len" in lines[0]
    assert tree(tmp_path) == []


def test_a_sweep_whose_first_point_fails_to_start_leaves_no_folder(tmp_path, monkeypatch):
    import gru_research.train as train_module
    from gru_research.sweep import run_sweep

    def refuse(config, values, run_dir, **kwargs):
        raise ValueError("the training program needs 1300.57 GiB but 22 GiB is available")

    monkeypatch.setattr(train_module, "train_group", refuse)
    sweep = write_sweep(tmp_path / "s.yaml", {**TINY_SWEEP, "cell": {"values": ["gru", "lstm"]}})
    out = tmp_path / "new" / "out"
    with pytest.raises(ValueError, match="1300.57 GiB"):
        run_sweep(sweep, out, wandb_mode="disabled")
    assert tree(tmp_path) == [sweep]


# ---------------------------------------------------------------------------------------------
# a sweep file, checked whole before its first point


@pytest.mark.parametrize(
    "parameters, extra, words",
    [
        (
            {"cell": {"values": ["gru", "grux"]}},
            {},
            "point 2 of 2 (cell=grux): unknown cell 'grux'",
        ),
        ({"cell": {"values": []}}, {}, "parameter 'cell': 'values' is an empty list"),
        ({"cell": {"values": "gru"}}, {}, "parameter 'cell': 'values' must be a list, got 'gru'"),
        ({"cell": "gru"}, {}, "parameter 'cell': needs a mapping with 'value', 'values'"),
        ({"steps": {"value": "ten"}}, {}, "steps must be an integer, got 'ten'"),
        ({"lr": {"values": [0.01, -1.0]}}, {}, "point 2 of 2 (lr=-1.0): lr must be a finite"),
        ({"lr": {"distribution": "uniform", "min": 0.1, "max": 1}}, {}, "a grid sweep needs"),
        ({"cell": {"values": ["gru"]}}, {"seeds": "two"}, "seeds must be an integer, got 'two'"),
        (
            {"cell": {"values": ["gru", "lstm"]}},
            {"report": {"reference": "mgu"}},
            "reference 'mgu' is not a cell of the sweep; valid: gru, lstm",
        ),
        (
            {"cell": {"values": ["gru", "lstm"]}},
            {"report": {"claims": [{"text": "c", "where": {"cell": "gru"}, "beats": {}}]}},
            "claim 'c' has no check; valid checks: below, above,",
        ),
        (
            {"cell": {"values": ["gru", "lstm"]}},
            {"report": {"claims": [{"text": "c", "where": {"cell": ["gru", "mgu"]}, "above": 0}]}},
            "claim 'c': cell 'mgu' is not in the sweep; valid: gru, lstm",
        ),
        (
            {"cell": {"values": ["gru", "lstm"]}},
            {"report": {"claims": [{"text": "c", "better_than": {"dataset": "jsb"}}]}},
            "claim 'c': 'dataset' is not a parameter of the sweep; valid: ",
        ),
        (
            {"cell": {"values": ["gru", "lstm"]}},
            {"report": {"paper": [{"cell": "mgu", "value": 1.0, "source": "Table 1"}]}},
            "paper entry 'Table 1': cell 'mgu' is not in the sweep; valid: gru, lstm",
        ),
        (
            {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}},
            {"method": "random", "runs": 2},
            "log_uniform_values needs min > 0",
        ),
        (
            {"lr": {"distribution": "gaussian", "mu": 0}},
            {"method": "random", "runs": 2},
            "unknown distribution 'gaussian'",
        ),
        ({"cell": {"values": ["gru"]}}, {"method": "random", "runs": "3"}, "'runs' must be"),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_it_before_any_point(
    tmp_path, capsys, parameters, extra, words
):
    sweep = write_sweep(tmp_path / "s.yaml", {**TINY_SWEEP, **parameters}, **extra)
    code, lines = cli(capsys, "sweep", str(sweep), "--out", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"gru-research: error: {sweep}: ") and words in lines[0], lines
    assert tree(tmp_path) == [sweep]


# ---------------------------------------------------------------------------------------------
# tables: a metric no run logged, a reference that is not a row


def fake_run(root: Path, cell: str, final: dict) -> Path:
    folder = root / "runs" / cell
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"task": "copy", "cell": cell}}))
    summary = {"task": "copy", "cell": cell, "seeds": [0, 1], "diverged": [], "final": final}
    (folder / "summary.json").write_text(json.dumps(summary))
    records = [{"step": 10, "seed": s, "split": "validation", "loss": 0.1} for s in (0, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--metric", "accuracy"],
            "no run logged the metric 'accuracy'; logged: bits_per_token, bpc, loss",
        ),
        (["--reference", "lstm"], "reference 'lstm' is not a row (cell); valid: gru, mgu"),
        (["--rows", "cell,colour"], "unknown row parameters ['colour']; valid: cell, task"),
    ],
)
def test_a_table_of_an_unknown_metric_or_reference_is_one_line(tmp_path, capsys, args, words):
    fake_run(tmp_path, "gru", {"loss": [0.1, 0.2], "bpc": [1.0, 1.1]})
    fake_run(tmp_path, "mgu", {"loss": [0.3, 0.4], "bpc": [1.2, 1.3]})
    before = tree(tmp_path)
    code, lines = cli(capsys, "table", str(tmp_path), *args)
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# corrupt files: the error names the file


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
@pytest.mark.parametrize("content", [b'{"run": {"cell": ', b"\x89PNG\r\n\x1a\n\x00\xff"])
def test_a_corrupt_run_file_is_one_line_naming_it(tmp_path, capsys, name, content):
    folder = fake_run(tmp_path, "gru", {"loss": [0.1, 0.2]})
    (folder / name).write_bytes(content)
    code, lines = cli(capsys, "table", str(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert f"{folder / name} is not valid JSON" in lines[0]


def test_a_corrupt_metrics_file_is_one_line_naming_it(tmp_path, capsys):
    folder = fake_run(tmp_path, "gru", {"loss": [0.1, 0.2]})
    (folder / "metrics.jsonl").write_text('{"step": 10, "seed": 0, "split": "valid\n')
    code, lines = cli(capsys, "table", str(tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert f"{folder / 'metrics.jsonl'} is not valid JSON lines" in lines[0]


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match=f"^{path} is not valid JSON: Expecting value"):
        read_json(path)


@pytest.mark.parametrize(
    "content, words",
    [(b"\x89PNG\r\n\x1a\n\xff\xfe" * 100, "is not UTF-8 text"), (b"\x00" * 4096, "NUL bytes")],
)
def test_a_text_file_that_is_not_text_is_one_line_naming_it(tmp_path, content, words):
    from gru_research.tasks.lm import read_text_file_splits

    path = tmp_path / "corpus.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_text_file_splits(path)
    assert str(err.value).startswith(f"lm text file {path} ") and words in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_the_cli_names_a_binary_text_file(tmp_path, capsys):
    path = tmp_path / "corpus.bin"
    path.write_bytes(b"\xff\xfe\x00\x01" * 1000)
    run = tmp_path / "run"
    code, lines = cli(capsys, "train", "--task=lm", f"--text-file={path}", "--out", str(run))
    assert code == 2 and len(lines) == 1 and str(path) in lines[0], lines
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# permissions of run files and reports


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "summary.json", "{}\n")
        plain = tmp_path / "plain.json"
        plain.write_text("{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == mode
    assert plain.stat().st_mode & 0o777 == mode


def test_an_atomic_rewrite_keeps_the_file_permissions(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old\n")
    path.chmod(0o640)
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    assert tree(tmp_path) == [path]
