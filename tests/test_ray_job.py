"""`ray job submit` against a Ray head that the test starts on 127.0.0.1 (the cluster path)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
LIMIT = 600
"""Seconds for the head to come up and for the job: a bound for hangs, not a timing (a loaded
2-core machine takes over 4 minutes for a short Ray run that a quiet one finishes in one)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A head node in its own process group, stopped by killing exactly that group."""
    temp_dir = tempfile.mkdtemp(prefix="lr-", dir="/tmp")  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
           # Loopback-only test cluster: no token. Outside tests keep token auth on (README).
           "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           # Without it Ray rewrites --node-ip-address=127.0.0.1 to the machine's external
           # address and this tokenless head would listen on every interface (docs/binding).
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            # A trivial job, not `ray job list`: the dashboard answers before the head's job
            # agent is ready ("No available agent to submit job"), which a loaded machine shows.
            probe = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address,
                                    "--", "true"], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, head.stdout.read()
            time.sleep(1)
        else:
            raise AssertionError("the Ray head did not come up: " + probe.stdout[-1500:] + probe.stderr[-1500:])
        yield address, env
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # some Ray daemons ignore SIGTERM
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("inner", [(), ("--set", 'inner="rllib"', "--set", 'rllib.algorithm="PPO"')],
                         ids=["a2c", "rllib-ppo"])
def test_ray_job_submit_runs_the_ci_meta_training_on_a_head_node(ray_head, tmp_path, inner):
    address, env = ray_head
    run_dir = tmp_path / "job-run"  # absolute: the job's working directory is a copy of the repo
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
         "--", "python", "-m", "leap_rl.cli", "train", "--preset", "ci", *inner, "--address", "auto",
         "--run-dir", str(run_dir)],
        env=env, capture_output=True, text=True, timeout=LIMIT)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout.lower()
    assert "meta-step 2/2" in job.stdout
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["version"] == 2
    if inner:  # the tasks were trained by RLlib's PPO, not by the A2C path
        import json
        progress = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                    if r.get("event") == "progress"]
        assert progress and all(r.get("inner") == "rllib:PPO" for r in progress)
