"""The Ray runtime at scale and under chaos, made real on one machine: 16 TaskWorkers of the ci
preset with workers killed at random moments, and one run that loses a worker, its learner
and its driver, each at a random moment, and is resumed. In sync mode both must end at the φ
an undisturbed one-process run makes, bit for bit: a lost or double-counted segment, or a
task counted twice after a retry, would show there.

The moments are random but seeded (the test's own RNG picks, from the run's progress, when
to kill and whom), and nothing waits a fixed time (tests/test_runtime.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess

import pytest
import torch

from conftest import leap_rl
from test_runtime import LONGER, Background, checkpoint_version, ok, phi_of, rows

pytestmark = pytest.mark.slow

SCALE = ("--preset", "ci", "--set", "meta.tasks_per_step=16", "--set", "runtime.workers=16",
         "--set", "runtime.probe_tasks=0", "--set", "meta.env_steps_per_task=600",
         "--set", "runtime.max_segments_in_flight=1")
CHAOS = ("--preset", "ci", *LONGER, "--set", "meta.meta_steps=3", "--set", "runtime.probe_tasks=0",
         "--set", "runtime.max_segments_in_flight=1")


def sequential_phi(tmp_path, *config: str) -> torch.Tensor:
    run_dir = tmp_path / "sequential"
    ok(leap_rl("train", "--runtime", "sequential", *config, "--run-dir", str(run_dir)))
    return phi_of(run_dir)


def progress_count(run_dir) -> int:
    return len(rows(run_dir, "progress"))


def test_sixteen_workers_with_random_kills_end_at_the_undisturbed_phi(tmp_path):
    rng = random.Random(16)
    run_dir = tmp_path / "scale"
    bg = Background(tmp_path / "out.txt", "train", *SCALE, "--run-dir", str(run_dir))
    killed = 0
    try:
        for _ in range(3):  # three kills, each once the run has made a random amount of progress
            target = progress_count(run_dir) + rng.randint(5, 20)
            pids = bg.wait_until(f"{target} progress rows", lambda: progress_count(run_dir) >= target
                                 and bg.task_worker_pids())
            os.kill(rng.choice(pids), signal.SIGKILL)
            killed += 1
            if checkpoint_version(run_dir) == 2:
                break
        bg.finish()
    finally:
        bg.kill()
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2] and [r["tasks"] for r in meta] == [16, 16]
    failed = rows(run_dir, "worker_failed")
    assert 1 <= len(failed) <= killed  # a kill between two tasks replaces an idle worker only
    assert rows(run_dir, "rejected_segment") == []  # the learner refused nothing it should keep
    assert torch.equal(phi_of(run_dir), sequential_phi(tmp_path, *SCALE))


def test_a_run_that_loses_a_worker_its_learner_and_its_driver_resumes_to_the_undisturbed_phi(tmp_path):
    rng = random.Random(3)
    run_dir = tmp_path / "chaos"
    victims = ["ray::TaskWorker", "ray::LearnerActor", "driver"]
    rng.shuffle(victims)  # in a random order, each at a random moment
    bg = Background(tmp_path / "out.txt", "train", *CHAOS, "--run-dir", str(run_dir))
    try:
        for victim in victims:
            target = progress_count(run_dir) + rng.randint(3, 12)
            # the driver once a checkpoint exists: before it, a killed run is simply started again
            bg.wait_until(f"{target} progress rows before killing the {victim}",
                          lambda: progress_count(run_dir) >= target
                          and (victim != "driver" or checkpoint_version(run_dir) is not None))
            if victim == "driver":
                os.killpg(bg.proc.pid, signal.SIGKILL)  # the driver and the Ray it started
                bg.proc.wait()
                # what is left of the chaos happens to the resumed run
                bg = Background(tmp_path / "resumed.txt", "train", "--resume", "--run-dir", str(run_dir))
            else:
                pids = bg.wait_until(f"a {victim} to kill", lambda: session_pids(bg, victim))
                os.kill(pids[0], signal.SIGKILL)
        bg.finish()
    finally:
        bg.kill()
    assert sorted({r["version"] for r in rows(run_dir, "meta_step")}) == [1, 2, 3]
    assert len(rows(run_dir, "learner_restarted")) <= 1 and len(rows(run_dir, "worker_failed")) <= 1
    assert torch.equal(phi_of(run_dir), sequential_phi(tmp_path, *CHAOS))


def session_pids(bg: Background, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(bg.proc.pid), "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
