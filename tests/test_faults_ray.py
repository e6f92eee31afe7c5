"""Faults of the Ray runtime, each made real: a killed LearnerActor, a worker stopped with
SIGSTOP (alive but stuck), tasks that raise inside their worker, resources the machine does not
have, a Ctrl-C and a SIGTERM, and async tasks refused as stale. Real Ray on 127.0.0.1, real ALE
games, real processes signalled; nothing waits a fixed time (see tests/test_runtime.py).
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from conftest import leap_rl
from leap_rl.config import load
from leap_rl.models import initial_encoder
from test_runtime import (KILLABLE, LIMIT, LONGER, SEGMENT_EVERY, Background, checkpoint_version,
                          freeze_busy_workers, ok, phi_of, resume, rows)

pytestmark = pytest.mark.slow

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


@pytest.fixture(scope="module")
def sequential_phi(tmp_path_factory) -> torch.Tensor:
    """The reference: the same meta-training in one process, undisturbed."""
    run_dir = tmp_path_factory.mktemp("seq") / "run"
    ok(leap_rl("train", "--runtime", "sequential", "--preset", "ci", *LONGER, "--set", "runtime.probe_tasks=0",
               "--run-dir", str(run_dir)))
    return phi_of(run_dir)


def session_pids(bg: Background, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(bg.proc.pid), "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def busy_workers(bg: Background, run_dir, workers: int, updates: int) -> list[int]:
    """The TaskWorker pids, stopped, once ``workers`` tasks of meta-step 2 are each past their
    first accepted segment (KILLABLE) with 30 updates to go (see freeze_busy_workers)."""
    return freeze_busy_workers(bg, run_dir, workers, updates, lambda rs: checkpoint_version(run_dir) == 1)


def test_a_killed_learner_restarts_from_the_checkpoint_and_phi_matches_an_undisturbed_run(tmp_path, sequential_phi):
    """SIGKILL the LearnerActor inside meta-step 2, while it holds accepted segments of both
    tasks: the run restarts it from checkpoint 1 and re-runs meta-step 2 with the same tasks."""
    run_dir = tmp_path / "learner"
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, *KILLABLE, "--run-dir", str(run_dir))
    try:
        frozen = busy_workers(bg, run_dir, workers=2, updates=100)
        (learner,) = session_pids(bg, "ray::LearnerActor")
        os.kill(learner, signal.SIGKILL)
        resume(frozen)
        bg.finish()
    finally:
        bg.kill()
    (restart,) = rows(run_dir, "learner_restarted")
    assert restart["version"] == 1
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2] and [r["tasks"] for r in meta] == [2, 2]
    assert torch.equal(phi_of(run_dir), sequential_phi)
    out = bg.log.read_text()
    assert "Traceback" not in out
    # a quiet local run: neither Ray's token notice nor a worker's ALE banner
    assert "Token authentication is enabled" not in out and "A.L.E" not in out


def test_a_stuck_worker_is_treated_as_dead_after_the_stall_timeout(tmp_path, sequential_phi):
    """SIGSTOP one worker mid-task: alive, it would hold the sync barrier for ever. With
    runtime.stall_timeout_s its task is re-run elsewhere and φ is still the undisturbed one."""
    run_dir = tmp_path / "stall"
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, *KILLABLE,
                    "--set", "runtime.stall_timeout_s=45", "--run-dir", str(run_dir))
    stopped = None
    try:
        stopped = busy_workers(bg, run_dir, workers=1, updates=100)[0]  # stays stopped
        bg.finish()
    finally:
        bg.kill()
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)  # if Ray has not ended it already
            except ProcessLookupError:
                pass
    stalls = rows(run_dir, "worker_stalled")
    assert stalls and all("runtime.stall_timeout_s=45" in r["error"] for r in stalls)
    done = {r["task_id"] for r in rows(run_dir, "task_done")}
    assert any(r["task_id"] not in done and r["task_id"] + "-r1" in done for r in stalls)
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2] and [r["tasks"] for r in meta] == [2, 2]
    assert torch.equal(phi_of(run_dir), sequential_phi)


@NO_GPU
def test_a_task_that_raises_is_retried_then_dropped_with_its_error(tmp_path):
    """runtime.device = "cuda" on a machine without CUDA: every task raises inside its worker
    (a RayTaskError at the driver). Each is re-run runtime.max_task_retries times, then dropped
    and logged with its error; the meta-steps go on without them and φ stays φ_0."""
    run_dir = tmp_path / "raises"
    proc = leap_rl("train", "--preset", "ci", "--set", 'runtime.device="cuda"', "--set", "runtime.max_task_retries=1",
                   "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir), timeout=LIMIT)
    ok(proc)
    errors, dropped = rows(run_dir, "task_error"), rows(run_dir, "task_dropped")
    assert len(dropped) == 2 * 2  # 2 meta-steps × 2 tasks
    assert all(r["attempts"] == 2 and "CUDA" in r["error"] for r in dropped), dropped
    assert sorted(r["attempt"] for r in errors) == [0] * 4 + [1] * 4  # each task: the first run, one re-run
    assert {r["task_id"].split("-r")[0] for r in errors} == {r["task_id"].split("-r")[0] for r in dropped}
    assert [r["tasks"] for r in rows(run_dir, "meta_step")] == [0, 0]
    assert torch.equal(phi_of(run_dir), initial_encoder(load("ci").model, seed=0))


@NO_GPU
@pytest.mark.parametrize("setting", ["runtime.gpus_per_worker=0.5", "runtime.learner_gpus=1"])
def test_resources_the_machine_lacks_are_refused_before_the_run_starts(tmp_path, setting):
    run_dir = tmp_path / "run"
    proc = leap_rl("train", "--preset", "ci", "--set", setting, "--run-dir", str(run_dir), timeout=LIMIT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and setting.split("=")[0] in errors[0] and "cannot be had" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing made: the same command with a setting that fits starts afresh


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_cleanly_and_says_how_to_resume(tmp_path, sequential_phi, sig, code):
    """Ctrl-C reaches the driver and the Ray it started (the terminal signals the whole
    process group); SIGTERM comes to the driver alone, as from a scheduler. Either stops the
    run with no Ray process left and a line saying how to go on, and the resumed run ends at
    the undisturbed φ."""
    run_dir = tmp_path / "signal"
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, "--set", "runtime.probe_tasks=0",
                    "--run-dir", str(run_dir))
    try:
        bg.wait_until("a checkpoint", lambda: checkpoint_version(run_dir))
        if sig == signal.SIGINT:
            os.killpg(bg.proc.pid, sig)
        else:
            os.kill(bg.proc.pid, sig)
        bg.proc.wait(timeout=LIMIT)
        out = bg.log.read_text()
        assert bg.proc.returncode == code, out[-3000:]
        assert f"go on with: leap-rl train --resume --run-dir {run_dir}" in out
        assert "Traceback" not in out and "*** SIG" not in out  # no Python or C++ stack dump
        left = subprocess.run(["pgrep", "-s", str(bg.proc.pid)], capture_output=True, text=True).stdout.split()
        assert left == [], left
    finally:
        bg.kill()
    ok(leap_rl("train", "--resume", "--run-dir", str(run_dir), timeout=LIMIT))
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    assert torch.equal(phi_of(run_dir), sequential_phi)


def test_async_tasks_refused_as_stale_stop_at_their_next_segment(tmp_path):
    """Three workers, one task per meta-step and no staleness allowed: after each meta-step the
    other two tasks can no longer count. Their workers stop them at the first refused segment
    instead of training to the end, and the meta_step rows count what was trained and used."""
    run_dir = tmp_path / "async"
    ok(leap_rl("train", "--preset", "ci", *LONGER, "--set", 'meta.mode="async"', "--set", "meta.tasks_per_step=1",
               "--set", "meta.meta_steps=4", "--set", "meta.max_staleness=0", "--set", "runtime.workers=3",
               "--set", 'meta.stale="drop"', "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir),
               timeout=LIMIT))
    stopped = rows(run_dir, "task_stopped")
    assert stopped, "no task was refused while running"
    progress = rows(run_dir, "progress")
    for stop in stopped:
        trained = [r["env_steps"] for r in progress if r["task_id"] == stop["task_id"]]
        assert max(trained, default=0) <= stop["env_steps"]  # nothing trained past the refused segment
        assert stop["env_steps"] == stop["segments"] * SEGMENT_EVERY * 20  # ci: 20 env steps an update
    refused = {r["task_id"] for r in rows(run_dir, "rejected_segment") if "stale" in r["reason"]}
    assert {s["task_id"] for s in stopped} <= refused
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2, 3, 4]
    trained, used = [r["env_steps_trained"] for r in meta], [r["env_steps_used"] for r in meta]
    assert trained == sorted(trained) and used == sorted(used)
    assert used[-1] == sum(r["tasks"] for r in meta) * 2000  # LONGER: 2000 env steps a task
    assert trained[-1] > used[-1]  # the stale tasks' steps, trained and not used


def test_async_with_stale_tasks_weighted_uses_what_it_trains(tmp_path):
    """The same run with meta.stale = "weight" (the default): no task is refused for its age,
    stale ones count down-weighted, and no task starts that the run could not use, so at least
    90 % of the env steps trained reach φ (here all of them)."""
    run_dir = tmp_path / "async"
    ok(leap_rl("train", "--preset", "ci", *LONGER, "--set", 'meta.mode="async"', "--set", "meta.tasks_per_step=1",
               "--set", "meta.meta_steps=4", "--set", "meta.max_staleness=0", "--set", "runtime.workers=3",
               "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir), timeout=LIMIT))
    assert not rows(run_dir, "task_stopped") and not rows(run_dir, "rejected_segment")
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2, 3, 4]
    assert sum(r["stale_weighted"] for r in meta) >= 1, "no task was stale: the test shows nothing"
    assert min(r["min_task_weight"] for r in meta) < 1.0
    trained, used = meta[-1]["env_steps_trained"], meta[-1]["env_steps_used"]
    assert used >= 0.9 * trained and used == sum(r["tasks"] for r in meta) * 2000
