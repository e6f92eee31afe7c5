#!/usr/bin/env bash
# The experiment of docs/RESULTS.md, resumable: re-running it continues where it stopped.
#   bash docs/experiment/run.sh            (from the repository root; about 2.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
leap=.venv/bin/leap-rl
out=${OUT:-runs/experiment}
train() {  # name, extra --set arguments...
  local name=$1; shift
  if [ -f "$out/$name/checkpoint.pt" ]; then
    $leap train --resume --run-dir "$out/$name"
  else
    $leap train --preset baselines --config docs/experiment/leap.toml "$@" --run-dir "$out/$name"
  fi
}
train leap
train reptile --set leap.loss=false     # Reptile: energy metric, loss term off (LEAP.md §2)
train length --set 'leap.metric="length"'   # the reference code's metric, all else equal
# The rest of the paper's estimator ablation, each one change from `leap`, same budget and seeds.
train no_stabilizer --set leap.stabilizer=false
train length_no_loss --set 'leap.metric="length"' --set leap.loss=false
train unnormalized --set meta.normalize_tasks=false
resume=()
[ -d "$out/eval" ] && resume=(--resume)
$leap evaluate --init leap="$out/leap" --init reptile="$out/reptile" --random --init length="$out/length" \
  --init no_stabilizer="$out/no_stabilizer" --init length_no_loss="$out/length_no_loss" \
  --init unnormalized="$out/unnormalized" \
  --games seaquest,space_invaders,ms_pacman --seeds 3 --env-steps 100000 --jobs 2 --out "$out/eval" "${resume[@]}"
