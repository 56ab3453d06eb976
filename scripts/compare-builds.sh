#!/usr/bin/env bash
# Step time of two taper builds on the default config, alternated (A, B, A, B, ...) so that
# machine noise hits both; prints each pair and the ratio of mean ms/step (B / A).
# Used for the "measured 0.97x"-style figures in docs/performance.md.
#
# Usage: scripts/compare-builds.sh BIN_A BIN_B [--rounds N] [--steps S] [--threads T]
#                                  [--set K=V]... [--set-a K=V]... [--set-b K=V]...
#   e.g. git stash; cargo build --release; cp target/release/taper /tmp/taper-a; git stash pop
#        cargo build --release; scripts/compare-builds.sh /tmp/taper-a target/release/taper
#   --set applies to both sides, --set-a / --set-b to one: the same binary with two settings,
#   e.g. scripts/compare-builds.sh target/release/taper target/release/taper --set-b model.bias=false
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [--rounds N] [--steps S] [--threads T]" >&2; exit 2; }
a=$1 b=$2; shift 2
rounds=8 steps=40 threads=1 both=() only_a=() only_b=()
while [ $# -gt 0 ]; do
  case "$1" in
    --set) both+=(--set "$2"); shift 2 ;;
    --set-a) only_a+=(--set "$2"); shift 2 ;;
    --set-b) only_b+=(--set "$2"); shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
  local bin=$1; shift
  rm -rf "$work/run"
  RAYON_NUM_THREADS=$threads "$bin" train configs/gpt-shakespeare-char.toml --set train.steps="$steps" \
    --set schedule.warmup_steps=$((steps / 4)) --set train.eval_every=1000000 --set checkpoint.every=0 \
    --set checkpoint.dir="$work/run" --quiet ${both[@]+"${both[@]}"} "$@"
  python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['ms_per_step'])" "$work/run/summary.json"
}
for i in $(seq 1 "$rounds"); do
  echo "$(run "$a" ${only_a[@]+"${only_a[@]}"}) $(run "$b" ${only_b[@]+"${only_b[@]}"})"
done | awk '{printf "pair %d: A %.2f ms  B %.2f ms  B/A %.4f\n", NR, $1, $2, $2 / $1; sa += $1; sb += $2}
            END {printf "mean A %.2f ms  B %.2f ms  ratio B/A %.4f (%d pairs)\n", sa / NR, sb / NR, sb / sa, NR}'
