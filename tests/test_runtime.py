"""The distributed runtime on real Ray (a local Ray bound to 127.0.0.1, real ALE games)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import LEAP_RL, REPO, leap_rl
from leap_rl.config import load
from leap_rl.models import initial_encoder

pytestmark = pytest.mark.slow

# The ci preset with tasks long enough (about 5 s each here) to kill something mid-task.
LONGER = ("--set", "meta.env_steps_per_task=2000", "--set", "meta.segment_every=20")


def phi_of(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["learner"]["phi"]


def rows(run_dir: Path, event: str) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r.get("event") == event]


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def start_background(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*LEAP_RL, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_row(run_dir: Path, event: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and rows(run_dir, event):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no {event!r} row within {timeout} s")


@pytest.fixture(scope="module")
def sequential_phi(tmp_path_factory) -> torch.Tensor:
    """φ after the ci meta-training (longer tasks) run in one process: the reference."""
    run_dir = tmp_path_factory.mktemp("seq") / "run"
    ok(leap_rl("train", "--runtime", "sequential", "--preset", "ci", *LONGER, "--run-dir", str(run_dir)))
    return phi_of(run_dir)


def test_sync_ray_run_gives_the_same_phi_as_the_sequential_loop(tmp_path, sequential_phi):
    run_dir = tmp_path / "ray"
    ok(leap_rl("train", "--preset", "ci", *LONGER, "--run-dir", str(run_dir)))
    start = initial_encoder(load("ci").model, seed=0)
    assert not torch.equal(sequential_phi, start)  # φ moved, so the comparison means something
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2]
    for key in ("tasks", "path_length", "meta_grad_norm", "env_steps_total", "fps",
                "episode_return_mean", "param_part_norm", "loss_part_norm", "dead_unit_fraction"):
        assert key in meta[-1], key
    assert (run_dir / "config.toml").exists() and list((run_dir / "tb").iterdir())


def test_killed_worker_is_replaced_and_phi_matches_the_sequential_loop(tmp_path, sequential_phi):
    run_dir = tmp_path / "kill"
    proc = start_background("train", "--preset", "ci", *LONGER, "--run-dir", str(run_dir))
    try:
        wait_for_row(run_dir, "progress", proc)
        pids = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "ray::TaskWorker"],
                              capture_output=True, text=True).stdout.split()
        assert pids, "no TaskWorker process found"
        os.kill(int(pids[0]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    failed = rows(run_dir, "worker_failed")
    assert failed, "the kill was not noticed"
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    # The dead worker's partial segments were dropped and its task re-run from the start.
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)


def test_driver_killed_mid_run_resumes_to_the_same_phi(tmp_path, sequential_phi):
    run_dir = tmp_path / "resume"
    proc = start_background("train", "--preset", "ci", *LONGER, "--run-dir", str(run_dir))
    try:
        wait_for_row(run_dir, "meta_step", proc)
        time.sleep(1.0)  # inside meta-step 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["version"] == 1
    ok(leap_rl("train", "--resume", "--run-dir", str(run_dir)))
    starts = rows(run_dir, "start")
    assert [s["resume"] for s in starts] == [False, True] and starts[1]["version"] == 1
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)


def test_async_staleness_stays_within_the_bound(tmp_path):
    run_dir = tmp_path / "async"
    ok(leap_rl("train", "--preset", "ci", "--set", 'meta.mode="async"', "--set", "meta.tasks_per_step=1",
               "--set", "meta.meta_steps=4", "--set", "meta.max_staleness=1", "--run-dir", str(run_dir)))
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2, 3, 4]
    assert all(r["max_staleness_seen"] <= 1 for r in meta)
    done = rows(run_dir, "task_done")
    assert any(r["init_version"] < r["version"] for r in done), "no task ran across a meta-step"
    # A resume must hand out tickets (games, seeds) after every one already used.
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    used = max(int(r["task_id"].lstrip("a").split("-")[0]) for r in done)
    assert state["next_ticket"] > used


def test_non_finite_segments_are_rejected_and_never_reach_phi(tmp_path):
    run_dir = tmp_path / "nan"
    ok(leap_rl("train", "--preset", "ci", "--set", "a2c.lr=1e30", "--set", "a2c.max_grad_norm=0",
               "--run-dir", str(run_dir)))
    rejected = rows(run_dir, "rejected_segment")
    assert {r["game"] for r in rejected} == {"pong", "qbert"}
    assert all(r["tasks"] == 0 for r in rows(run_dir, "meta_step"))
    start = initial_encoder(load("ci").model, seed=0)
    assert torch.equal(phi_of(run_dir), start)
