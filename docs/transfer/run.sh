#!/usr/bin/env bash
# The transfer experiment of docs/RESULTS.md §5, resumable: re-running it continues where it
# stopped (every run and the evaluations pick up at their next task or agent).
#   bash docs/transfer/run.sh       (from the repository root; 1 h 40 min on 2 cores shared with other jobs)
# Two halves, each with the four inits random, reptile, finetune and leap, 10 seeds, 40k env
# steps per agent:
#   games:    meta-train on six pool games, evaluate on the paper's held-out Breakout and SpaceInvaders
#   flavours: meta-train on 15 SpaceInvaders flavours, evaluate on two held-out flavours
set -euo pipefail
cd "$(dirname "$0")/../.."
leap=.venv/bin/leap-rl
out=${OUT:-runs/transfer}
seeds=${SEEDS:-10}
env_steps=${ENV_STEPS:-40000}
mkdir -p "$out"

# run KIND HALF NAME [--set ...]: a meta-training (KIND=train) or fine-tuning (KIND=pretrain) run
run() {
  local kind=$1 half=$2 name=$3; shift 3
  local dir="$out/$half/$name"
  if [ -f "$dir/checkpoint.pt" ]; then
    $leap "$kind" --resume --run-dir "$dir"
  else
    $leap "$kind" --preset baselines --config "docs/transfer/$half.toml" "$@" --run-dir "$dir"
  fi
}

evaluate() {  # HALF GAMES
  local half=$1 games=$2 resume=()
  [ -d "$out/$half/eval" ] && resume=(--resume)
  $leap evaluate --init leap="$out/$half/leap" --init reptile="$out/$half/reptile" \
    --init finetune="$out/$half/finetune" --random --games "$games" --seeds "$seeds" \
    --env-steps "$env_steps" --points 20 --jobs 2 --out "$out/$half/eval" "${resume[@]}"
}

for half in games flavours; do
  run train "$half" leap                         # the paper's Atari estimator, the presets' meta-optimizer
  run train "$half" reptile --set leap.loss=false  # energy without the loss term is Reptile (LEAP.md §2)
done
# The fine-tuning baselines are one process each: run the two side by side on the 2 cores.
run pretrain games finetune > "$out/finetune_games.log" 2>&1 & games_pid=$!
run pretrain flavours finetune > "$out/finetune_flavours.log" 2>&1 & flavours_pid=$!
wait "$games_pid" && wait "$flavours_pid"
evaluate flavours "space_invaders:mode=7:difficulty=1,space_invaders:mode=9:difficulty=0"
evaluate games "breakout,space_invaders"
# transfer.json (both halves merged), transfer.md and transfer.png in docs/results
.venv/bin/python docs/transfer/report.py "$out" --out docs/results
