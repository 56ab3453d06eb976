#!/usr/bin/env bash
# Data-parallel speed on this machine: the default model at one global batch, trained as one
# process with 2 threads (grad_accum = 2) and as 2 MPI ranks with 1 thread each (grad_accum = 1
# per rank), alternated so that machine noise hits both; prints tokens/s of each, rank 0's
# all-reduce time per step, and the last line
#   dp_speedup=<2 ranks tokens/s / 1 process tokens/s> allreduce_ms=<per step>
# Needs a taper built with --features mpi and Open MPI's mpirun.
# Usage: scripts/bench-dp.sh [--rounds N] [--steps S] [--wide] [--set K=V]...
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 steps=200 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --wide) extra+=(--set model.n_layer=6 --set model.d_model=384 --set model.n_head=6 --set model.block_size=256 --set train.batch_size=8); shift ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
taper=$(scripts/taper-bin.sh --features mpi --quiet)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(train configs/gpt-shakespeare-char.toml --set train.steps="$steps" --set train.eval_every=0
  --set checkpoint.every=0 --set schedule.warmup_steps=10 "${extra[@]}")
tokens_per_s() { sed -n 's/.*"tokens_per_s": *\([0-9.e+-]*\).*/\1/p' "$1/summary.json"; }
one_total=0 two_total=0 ar_total=0
for round in $(seq "$rounds"); do
  RAYON_NUM_THREADS=2 "$taper" "${common[@]}" --set train.grad_accum=2 \
    --set checkpoint.dir="$work/one-$round" --quiet
  log=$(mpirun --bind-to core -n 2 -x RAYON_NUM_THREADS=1 "$taper" "${common[@]}" \
    --set train.grad_accum=1 --set checkpoint.dir="$work/two-$round" 2>&1)
  ar=$(echo "$log" | sed -n 's/^all-reduce: \([0-9.]*\) ms per step.*/\1/p')
  one=$(tokens_per_s "$work/one-$round") two=$(tokens_per_s "$work/two-$round")
  echo "round $round: 1 process x 2 threads $one tok/s, 2 ranks x 1 thread $two tok/s (all-reduce $ar ms/step)"
  one_total=$(python3 -c "print($one_total + $one)") two_total=$(python3 -c "print($two_total + $two)")
  ar_total=$(python3 -c "print($ar_total + $ar)")
done
python3 -c "print(f'dp_speedup={$two_total / $one_total:.3f} allreduce_ms={$ar_total / $rounds:.2f}')"
