"""What a crash leaves in a run directory, read back: a torn last line of metrics.jsonl, a
damaged checkpoint, a checkpoint whose meta_step row never reached the file, and a
config.toml edited between a run and its --resume. Real runs of the one-process runtime and
the real command line; the files are damaged the way a crash or an editor damages them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from conftest import leap_rl
from leap_rl.run_dir import CHECKPOINT, CONFIG, METRICS, PREVIOUS_CHECKPOINT, RunDir

SEQUENTIAL = ("train", "--runtime", "sequential", "--preset", "ci", "--set", "runtime.probe_tasks=0")


def phi_of(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["learner"]["phi"]


def meta_versions(run_dir: Path) -> list[int]:
    return [r["version"] for r in RunDir(run_dir, tensorboard=False).rows("meta_step")]


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A whole ci meta-training (2 meta-steps) in one process: the reference."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    ok(leap_rl(*SEQUENTIAL, "--run-dir", str(run_dir)))
    assert meta_versions(run_dir) == [1, 2]
    return run_dir


@pytest.fixture
def copy(finished, tmp_path) -> Path:
    """A copy of the finished run to damage."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def tear_last_line(run_dir: Path) -> str:
    """Cut the last row of metrics.jsonl in the middle, as a crash mid-write leaves it."""
    path = run_dir / METRICS
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2 - 1])
    return last


def test_a_torn_last_line_is_skipped_with_a_warning_by_plot_and_readers(copy, tmp_path):
    whole = RunDir(copy, tensorboard=False).rows()
    tear_last_line(copy)
    proc = leap_rl("plot", str(copy), "--out", str(tmp_path / "curves.png"))
    ok(proc)
    assert "Traceback" not in proc.stderr and "JSONDecodeError" not in proc.stderr
    (warning,) = warnings(proc.stderr)
    assert "torn last line" in warning and METRICS in warning
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert RunDir(copy, tensorboard=False).rows() == whole[:-1]  # the readers' view: all but the torn row


def test_a_resumed_run_cuts_a_torn_last_line_before_it_writes(copy):
    """The next row must not be glued to the torn one: after a resume every line is JSON."""
    tear_last_line(copy)
    run = RunDir(copy, tensorboard=False)
    run.log({"event": "start", "resume": True, "version": 2})
    lines = (copy / METRICS).read_text().split("\n")
    assert lines[-1] == "" and lines[-2] == '{"event": "start", "resume": true, "version": 2}'
    proc = leap_rl("plot", str(copy), "--out", str(copy / "again.png"))
    ok(proc)
    assert warnings(proc.stderr) == []  # nothing torn is left


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_ends_at_the_same_phi(finished, copy):
    """checkpoint.pt cut in half (a disk filling up, a copy cut short): --resume warns once,
    goes on from checkpoint.prev.pt (version 1), re-runs meta-step 2, and makes the same φ."""
    assert torch.load(copy / PREVIOUS_CHECKPOINT, weights_only=True)["version"] == 1
    data = (copy / CHECKPOINT).read_bytes()
    (copy / CHECKPOINT).write_bytes(data[: len(data) // 2])
    proc = leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(copy))
    ok(proc)
    assert "Traceback" not in proc.stderr
    (warning,) = warnings(proc.stderr)
    assert CHECKPOINT in warning and PREVIOUS_CHECKPOINT in warning and "version 1" in warning
    assert torch.equal(phi_of(copy / CHECKPOINT), phi_of(finished / CHECKPOINT))
    assert meta_versions(copy) == [1, 2]  # the re-made row of version 2 replaces the lost one


def test_two_damaged_checkpoints_refuse_to_resume_with_one_line(copy):
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (copy / name).write_bytes(b"not a checkpoint")
    before = (copy / METRICS).read_bytes()
    proc = leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(copy))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert CHECKPOINT in proc.stderr and PREVIOUS_CHECKPOINT in proc.stderr and "Traceback" not in proc.stderr
    assert (copy / METRICS).read_bytes() == before


def test_a_checkpoint_whose_row_never_reached_metrics_gets_it_on_resume(finished, copy):
    """The checkpoint is the commit point and carries its meta_step row: a crash after the
    checkpoint and before the row (here: the row removed) costs no row, and a resume never
    writes a row twice."""
    path = copy / METRICS
    lines = path.read_text().splitlines(keepends=True)
    last_meta = max(i for i, line in enumerate(lines) if '"event": "meta_step"' in line)
    removed = lines.pop(last_meta)
    path.write_text("".join(lines))
    assert meta_versions(copy) == [1]
    ok(leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(copy)))
    assert meta_versions(copy) == [1, 2]
    restored = RunDir(copy, tensorboard=False).rows("meta_step")[-1]
    assert restored == RunDir(finished, tensorboard=False).rows("meta_step")[-1]
    assert '"version": 2' in removed
    ok(leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(copy)))
    assert meta_versions(copy) == [1, 2]  # a second resume adds nothing


def test_every_meta_step_row_counts_env_steps_trained_and_used(finished):
    rows = RunDir(finished, tensorboard=False).rows("meta_step")
    per_step = 2 * 400  # ci: 2 tasks of 400 env steps (4 envs × 5 steps × 20 updates)
    assert [r["env_steps_trained"] for r in rows] == [per_step, 2 * per_step]
    assert [r["env_steps_used"] for r in rows] == [per_step, 2 * per_step]  # sync: every task counts


def test_resume_refuses_an_edited_config_and_names_the_settings(copy):
    config = copy / CONFIG
    text = config.read_text()
    assert "lr = 0.1\n" in text and "tasks_per_step = 2\n" in text
    config.write_text(text.replace("lr = 0.1\n", "lr = 0.2\n").replace("tasks_per_step = 2\n", "tasks_per_step = 3\n"))
    before = {name: (copy / name).read_bytes() for name in (CHECKPOINT, METRICS)}
    proc = leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(copy))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "meta.lr is 0.1 in the checkpoint and 0.2 in config.toml" in proc.stderr
    assert "meta.tasks_per_step is 2 in the checkpoint and 3 in config.toml" in proc.stderr
    assert {name: (copy / name).read_bytes() for name in before} == before  # nothing touched


@pytest.mark.parametrize("setting, value", [("runtime.max_task_retries", "-1"), ("runtime.call_timeout_s", "0"),
                                            ("runtime.stall_timeout_s", "-5"), ("runtime.learner_restarts", "-1")])
def test_fault_settings_are_validated_at_the_edge(tmp_path, setting, value):
    proc = leap_rl(*SEQUENTIAL, "--set", f"{setting}={value}", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert setting in proc.stderr
    assert not (tmp_path / "run").exists()
