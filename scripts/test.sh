#!/usr/bin/env bash
# The test suite (real ALE games, real Ray on 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
export RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
