"""The distributed runtime on real Ray (a local Ray bound to 127.0.0.1, real ALE games), and the
one-process loop where it is the reference.

Nothing here waits a fixed time: a test polls metrics.jsonl, the checkpoint or the process
table for the state it needs, under one generous overall limit (LIMIT) that is only there to
end a run that hangs.
"""

import json
import os
import re
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

LIMIT = 600.0
"""Seconds any one wait may take. A loaded 2-core machine takes over 4 minutes for a short Ray
run that a quiet one finishes in one (conftest.py): this is a bound for hangs, not a timing."""
POLL = 0.2

# The ci preset with tasks long enough (about 5 s each here) to kill something mid-task.
LONGER = ("--set", "meta.env_steps_per_task=2000", "--set", "meta.segment_every=20")
SEGMENT_EVERY = 20
# For the tests that kill a process: no probe tasks (they would share the workers), and at
# most one unanswered segment per worker, so that a worker which logged progress at update
# u ≥ SEGMENT_EVERY has had its first segment ACCEPTED by the learner: the segment of update
# SEGMENT_EVERY is sent, and waited for, before that update's progress row is made.
KILLABLE = ("--set", "runtime.probe_tasks=0", "--set", "runtime.max_segments_in_flight=1")


def phi_of(run_dir: Path) -> torch.Tensor:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["learner"]["phi"]


def all_rows(run_dir: Path) -> list[dict]:
    """Every complete row of metrics.jsonl (a line still being written is left for later)."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def rows(run_dir: Path, event: str, within: list[dict] | None = None) -> list[dict]:
    return [r for r in (all_rows(run_dir) if within is None else within) if r.get("event") == event]


def sessions(run_dir: Path) -> list[list[dict]]:
    """The rows of each start of the run (a resume starts a new session)."""
    out: list[list[dict]] = []
    for r in all_rows(run_dir):
        if r.get("event") == "start":
            out.append([])
        out[-1].append(r)
    return out


def checkpoint_version(run_dir: Path) -> int | None:
    """The version on disk: checkpoints are renamed into place, so a read sees a whole one."""
    try:
        return int(torch.load(run_dir / "checkpoint.pt", weights_only=True)["version"])
    except FileNotFoundError:
        return None


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


class Background:
    """`leap-rl ARGS` in its own session (so the driver and the Ray it starts can be killed as
    one group); its output goes to a file, never to a pipe that could fill up and block it."""

    def __init__(self, log: Path, *args: str) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([*LEAP_RL, *args], cwd=REPO, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def wait_until(self, what: str, predicate):
        """Poll ``predicate`` until it returns something true; fail if the run ends first."""
        deadline = time.monotonic() + LIMIT
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {LIMIT:.0f} s: {what}\n{self.output()}")
            time.sleep(POLL)

    def task_worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid), "-f", "ray::TaskWorker"],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=LIMIT)
        finally:
            self.kill()
        assert self.proc.returncode == 0, self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            self.proc.wait()


def updates_by_task(run_dir: Path) -> dict[str, int]:
    """The latest update each task reported in its progress rows."""
    out: dict[str, int] = {}
    for r in rows(run_dir, "progress"):
        out[r["task_id"]] = max(out.get(r["task_id"], 0), r["updates"])
    return out


def freeze_busy_workers(bg: Background, run_dir: Path, workers: int, updates: int, when=lambda rows: True) -> list[int]:
    """SIGSTOP ``workers`` TaskWorker processes, each while its task holds accepted segments at
    the learner, and return their pids, still stopped: the caller kills what it wants and
    SIGCONTs the rest (``resume``).

    A task counts once its latest progress row is between update SEGMENT_EVERY (its first
    segment accepted, see KILLABLE) and ``updates`` - 30 (its last 30 updates are a margin for
    rows that the driver logs up to a second late), while ``when(rows)`` holds; its worker is
    the row's ``worker_pid``. Each worker is stopped as soon as its task counts, so a fast task
    cannot finish while the test waits for a slow one: nothing depends on two tasks being in
    that window at the same moment."""
    latest, stopped = updates - 30, []

    def ready():
        rs = all_rows(run_dir)
        if not when(rs):
            return None
        done = {r["task_id"] for r in rows(run_dir, "task_done", rs)}
        seen: dict[str, dict] = {}
        for r in rows(run_dir, "progress", rs):
            if r["updates"] >= seen.get(r["task_id"], {"updates": -1})["updates"]:
                seen[r["task_id"]] = r
        for task, r in seen.items():
            if (task not in done and SEGMENT_EVERY <= r["updates"] <= latest
                    and r["worker_pid"] not in stopped and r["worker_pid"] in bg.task_worker_pids()):
                os.kill(r["worker_pid"], signal.SIGSTOP)
                stopped.append(r["worker_pid"])
        return list(stopped) if len(stopped) >= workers else None

    try:
        return bg.wait_until(f"{workers} tasks running between update {SEGMENT_EVERY} and {latest}", ready)
    except BaseException:
        resume(stopped)
        raise


def resume(pids: list[int]) -> None:
    """SIGCONT the stopped workers that are still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def kill_a_worker_after_its_first_segment(bg: Background, run_dir: Path, workers: int, updates: int,
                                         before_meta_step: int) -> None:
    """SIGKILL one TaskWorker process while its task holds accepted segments at the learner,
    before meta-step ``before_meta_step``; the other workers go on."""
    frozen = freeze_busy_workers(bg, run_dir, workers, updates,
                                 lambda rs: len(rows(run_dir, "meta_step", rs)) < before_meta_step)
    os.kill(frozen[0], signal.SIGKILL)
    resume(frozen[1:])


def assert_the_killed_task_was_dropped_after_sending_segments(run_dir: Path) -> dict:
    failed = rows(run_dir, "worker_failed")
    assert len(failed) == 1, failed
    dead = failed[0]["task_id"]
    assert updates_by_task(run_dir)[dead] >= SEGMENT_EVERY  # so the learner held a partial sum
    assert dead not in {r["task_id"] for r in rows(run_dir, "task_done")}
    # A dead worker's task is dropped quietly; no segment was refused as bad.
    assert rows(run_dir, "rejected_segment") == []
    return failed[0]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The ci meta-training (longer tasks) run in one process: the reference φ."""
    run_dir = tmp_path_factory.mktemp("seq") / "run"
    # No probe tasks here: they never touch φ, which the Ray runs with probes confirm.
    ok(leap_rl("train", "--runtime", "sequential", "--preset", "ci", *LONGER, "--set", "runtime.probe_tasks=0",
               "--run-dir", str(run_dir)))
    return run_dir


@pytest.fixture(scope="module")
def sequential_phi(sequential) -> torch.Tensor:
    return phi_of(sequential)


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


def test_plot_of_a_meta_training_run(sequential, tmp_path, monkeypatch):
    """The real run's metrics: the plot has the meta panels, and the path length per meta-step
    it draws is the one in the meta_step rows."""
    import matplotlib.pyplot as plt

    from leap_rl.plots import plot_run

    real_close = plt.close
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))  # keep it to look at
    out = plot_run(sequential, tmp_path / "curves.png")
    real_close("all")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    assert len(fig.axes) > 1
    lengths = [r["path_length"] for r in rows(sequential, "meta_step")]
    drawn = [list(line.get_ydata()) for ax in fig.axes[1:] for line in ax.lines]
    assert any(y == pytest.approx(lengths) for y in drawn if len(y) == len(lengths)), drawn
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels and all(re.match(r"^(pong|qbert) v\d+$", label) for label in labels), labels


def test_killed_worker_is_replaced_and_phi_matches_the_sequential_loop(tmp_path, sequential_phi):
    run_dir = tmp_path / "kill"
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, *KILLABLE, "--run-dir", str(run_dir))
    try:
        kill_a_worker_after_its_first_segment(bg, run_dir, workers=2, updates=100, before_meta_step=2)
        bg.finish()
    finally:
        bg.kill()
    failed = assert_the_killed_task_was_dropped_after_sending_segments(run_dir)
    done = {r["task_id"] for r in rows(run_dir, "task_done")}
    assert failed["task_id"] + "-r1" in done  # re-run from the start under a new id
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    assert [r["tasks"] for r in rows(run_dir, "meta_step")] == [2, 2]
    # The dead worker's partial segments never reached φ, and its retry counted once.
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)


def test_driver_killed_mid_run_resumes_to_the_same_phi(tmp_path, sequential_phi):
    run_dir = tmp_path / "resume"
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, "--run-dir", str(run_dir))
    try:
        # The driver logs the meta_step row, then saves: wait for the checkpoint itself.
        bg.wait_until("a checkpoint", lambda: checkpoint_version(run_dir))
    finally:
        bg.kill()
    assert checkpoint_version(run_dir) == 1  # killed inside meta-step 2
    ok(leap_rl("train", "--resume", "--run-dir", str(run_dir)))
    starts = rows(run_dir, "start")
    assert [s["resume"] for s in starts] == [False, True] and starts[1]["version"] == 1
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)


def test_sequential_run_killed_mid_run_resumes_to_the_same_phi(tmp_path, sequential_phi):
    run_dir = tmp_path / "seq-resume"
    bg = Background(tmp_path / "out.txt", "train", "--runtime", "sequential", "--preset", "ci", *LONGER,
                    "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir))
    try:
        bg.wait_until("a checkpoint", lambda: checkpoint_version(run_dir))
    finally:
        bg.kill()
    assert checkpoint_version(run_dir) == 1  # killed inside meta-step 2
    ok(leap_rl("train", "--resume", "--runtime", "sequential", "--run-dir", str(run_dir)))
    assert [r["version"] for r in rows(run_dir, "meta_step")] == [1, 2]
    torch.testing.assert_close(phi_of(run_dir), sequential_phi, rtol=1e-5, atol=1e-7)


def ticket(task_id: str) -> int:
    return int(task_id.lstrip("a").split("-")[0])


def test_async_staleness_bound_is_applied_and_reached(tmp_path):
    """Three workers start three tasks from φ_0 and every finished task makes a meta-step: the
    second one to finish is 1 version old (within the bound, used), the third 2 (dropped)."""
    run_dir = tmp_path / "async"
    ok(leap_rl("train", "--preset", "ci", "--set", 'meta.mode="async"', "--set", "meta.tasks_per_step=1",
               "--set", "meta.meta_steps=4", "--set", "meta.max_staleness=1", "--set", "runtime.workers=3",
               "--set", 'meta.stale="drop"', "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir)))
    meta = rows(run_dir, "meta_step")
    assert [r["version"] for r in meta] == [1, 2, 3, 4]
    assert max(r["max_staleness_seen"] for r in meta) == 1  # the bound is reached, not exceeded
    stale_refused = [r for r in rows(run_dir, "rejected_segment") if "stale" in r["reason"]]
    assert sum(r["dropped_stale"] for r in meta) + len(stale_refused) >= 1, "no task was too old"
    done = rows(run_dir, "task_done")
    assert any(r["init_version"] < r["version"] for r in done), "no task ran across a meta-step"
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["next_ticket"] > max(ticket(r["task_id"]) for r in done)


def test_async_run_survives_a_killed_worker_and_a_killed_driver(tmp_path):
    """Async mode: a worker killed mid-task (after its first segment was accepted) is replaced
    and its task never counts; then the driver is killed after a meta-step and the run resumed,
    which goes on with new tickets (games and seeds) from where the checkpoint left off."""
    run_dir = tmp_path / "async-faults"
    # Tasks of 150 updates: async tasks start at any offset from each other, and the two running
    # side by side must overlap between update 20 and 120 for the kill (see the helper).
    bg = Background(tmp_path / "out.txt", "train", "--preset", "ci", *LONGER, *KILLABLE,
                    "--set", "meta.env_steps_per_task=3000", "--set", 'meta.mode="async"',
                    "--set", "meta.tasks_per_step=1", "--set", "meta.meta_steps=3", "--run-dir", str(run_dir))
    try:
        # Before meta-step 2: whatever happens next, the run cannot reach meta-step 3 before
        # the driver is killed, since the replacement task must finish first.
        kill_a_worker_after_its_first_segment(bg, run_dir, workers=2, updates=150, before_meta_step=2)
        bg.wait_until("the kill is noticed", lambda: rows(run_dir, "worker_failed"))
        bg.wait_until("a checkpoint", lambda: checkpoint_version(run_dir))
    finally:
        bg.kill()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    version, next_ticket = int(state["version"]), int(state["next_ticket"])
    assert 1 <= version < 3
    ok(leap_rl("train", "--resume", "--run-dir", str(run_dir)))

    assert_the_killed_task_was_dropped_after_sending_segments(run_dir)
    first, second = sessions(run_dir)
    assert (first[0]["resume"], second[0]["resume"], second[0]["version"]) == (False, True, version)
    assert {r["version"] for r in rows(run_dir, "meta_step", first)} >= set(range(1, version + 1))
    assert [r["version"] for r in rows(run_dir, "meta_step", second)] == list(range(version + 1, 4))
    # The resumed run hands out tickets from the checkpoint's on: none that counted before.
    resumed = {ticket(r["task_id"]) for r in rows(run_dir, "progress", second) + rows(run_dir, "task_done", second)}
    assert resumed and min(resumed) == next_ticket
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["version"] == 3


def test_non_finite_segments_are_rejected_and_never_reach_phi(tmp_path):
    """a2c.lr = 30 without gradient clipping: the agents' losses and policies stay finite (no
    divergence flag), but their Leap vectors overflow. Only the learner's finiteness check
    stands between those vectors and φ."""
    run_dir = tmp_path / "nan"
    ok(leap_rl("train", "--preset", "ci", "--set", "a2c.lr=30", "--set", "a2c.max_grad_norm=0",
               "--set", "runtime.probe_tasks=0", "--run-dir", str(run_dir)))
    rejected = rows(run_dir, "rejected_segment")
    assert {r["game"] for r in rejected} == {"pong", "qbert"}
    non_finite = [r for r in rejected if "non-finite values" in r["reason"]]
    assert non_finite, [r["reason"] for r in rejected]
    assert all(r["tasks"] == 0 for r in rows(run_dir, "meta_step"))
    start = initial_encoder(load("ci").model, seed=0)
    assert torch.equal(phi_of(run_dir), start)
