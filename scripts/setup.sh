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
  # torch: on a machine without an NVIDIA driver, pin the CPU wheel 2.13.0 first. On the
  # project's build machines that exact file lies on disk, and any unpinned request (or a
  # range admitting a newer release) would pull a multi-GB CUDA build instead. With a GPU,
  # pyproject's range takes the ordinary wheel. LEAP_RL_TORCH overrides the choice.
  if [ -n "${LEAP_RL_TORCH:-}" ]; then
    .venv/bin/pip install -q "$LEAP_RL_TORCH"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch==2.13.0" || .venv/bin/pip install -q "torch==2.13.0" \
      --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
