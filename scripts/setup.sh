#!/usr/bin/env bash
# Create (or reuse) .venv at the repository root and install leap_rl into it with pip.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
stamp=.venv/.leap_rl-installed
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch: on a machine without an NVIDIA driver, install the CPU build 2.13.0+cpu first.
  # On the project's build machines that exact wheel lies on disk (pip's find-links); PyPI
  # itself only serves CUDA builds for Linux, several GB, so any unpinned request would pull
  # one. Elsewhere the CPU build comes from PyTorch's CPU index. With a GPU, pyproject's
  # range takes the ordinary wheel. LEAP_RL_TORCH=SPEC overrides the choice.
  if [ -n "${LEAP_RL_TORCH:-}" ]; then
    .venv/bin/pip install -q "$LEAP_RL_TORCH"
  elif ! command -v nvidia-smi >/dev/null 2>&1 && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || .venv/bin/pip install -q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
