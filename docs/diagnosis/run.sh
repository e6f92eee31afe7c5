#!/usr/bin/env bash
# The diagnosis of docs/RESULTS.md §3: which setting makes φ's units go dormant, at one small
# budget (the quick preset with 6 meta-steps of 2 tasks × 10k env steps; probes of 2 fixed
# tasks at φ_0, φ_3, φ_6), two seeds each, two runs at a time (one torch thread each).
# Resumable: re-running it skips finished runs and resumes interrupted ones.
#   bash docs/diagnosis/run.sh [VARIANT ...]     (from the repository root)
# Then: .venv/bin/python docs/diagnosis/report.py
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/diagnosis}
seeds=${SEEDS:-"0 1"}
base=(--preset quick --runtime sequential --set meta.meta_steps=6 --set meta.env_steps_per_task=10000
      --set runtime.probe_tasks=2 --set runtime.probe_every=3
      # the meta-optimizer the quick preset had when this ran (later --set win over these)
      --set meta.optimizer=\"adam\" --set meta.lr=0.0001 --set meta.normalize_tasks=false)
# One change each from the quick preset's settings of 2026-12-01 (Adam 1e-4, PyTorch RMSprop,
# FC-256 in the encoder, f = the A2C total); the second round varies the first round's best.
declare -A variant=(
  [adam]=""
  [sgd]="--set meta.optimizer=\"sgd\" --set meta.normalize_tasks=true --set meta.lr=0.1"
  [adam_bounded]="--set meta.max_unit_step=0.001"
  [rmsprop_tf]="--set a2c.optimizer=\"rmsprop_tf\""
  [conv_only]="--set model.encoder_includes_fc=false"
  [value_f]="--set leap.loss_signal=\"value\""
  [recycle]="--set meta.recycle_dormant=true"
  [layer_norm]="--set model.layer_norm=true"
  [reptile]="--set leap.loss=false"
  # round 2, around the first round's best (SGD on unit-norm task vectors)
  [sgd_conv_only]="--set meta.optimizer=\"sgd\" --set meta.normalize_tasks=true --set meta.lr=0.1 --set model.encoder_includes_fc=false"
  [sgd_rmsprop_tf]="--set meta.optimizer=\"sgd\" --set meta.normalize_tasks=true --set meta.lr=0.1 --set a2c.optimizer=\"rmsprop_tf\""
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(adam sgd adam_bounded rmsprop_tf conv_only value_f recycle layer_norm reptile
                                 sgd_conv_only sgd_rmsprop_tf)
one() {  # name seed
  local dir="$out/$1-s$2"
  if grep -qs '"event": "probe", "version": 6' "$dir/metrics.jsonl"; then return 0; fi
  if [ -f "$dir/checkpoint.pt" ]; then
    .venv/bin/leap-rl train --resume --runtime sequential --run-dir "$dir" > "$dir.log" 2>&1
  else
    rm -rf "$dir"
    # shellcheck disable=SC2086
    eval .venv/bin/leap-rl train "${base[@]}" ${variant[$1]} --seed "$2" --run-dir "$dir" > "$dir.log" 2>&1
  fi
  echo "done $1 seed $2: $(tail -n 2 "$dir.log" | head -n 1)"
}
export OMP_NUM_THREADS=1
mkdir -p "$out"
running=0
for s in $seeds; do
  for n in "${names[@]}"; do
    [ -n "${variant[$n]+set}" ] || { echo "unknown variant $n; known: ${!variant[*]}" >&2; exit 2; }
    one "$n" "$s" &
    running=$((running + 1))
    if [ "$running" -ge 2 ]; then wait -n; running=$((running - 1)); fi
  done
done
wait
