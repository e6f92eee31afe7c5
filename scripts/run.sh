#!/usr/bin/env bash
# The main job on its default: a few meta-steps of Leap over three Atari games on a local Ray
# (minutes on 2 cores). Extra arguments go to `leap-rl train`, e.g. --run-dir runs/mine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
run_dir="runs/quick-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/leap-rl train --preset quick --run-dir "$run_dir" "$@"
