import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
LEAP_RL = [sys.executable, "-m", "leap_rl.cli"]


def leap_rl(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess (a generous timeout: a loaded 2-core machine
    takes over 4 minutes for a short Ray run that a quiet one finishes in one)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*LEAP_RL, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture
def run_cli():
    return leap_rl
