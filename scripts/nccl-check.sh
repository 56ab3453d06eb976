#!/usr/bin/env bash
# The one command for the day a machine with two or more GPUs is lent (issue 16): builds taper
# with --features nccl and checks that 2 ranks (one GPU each, gradients summed by NCCL) train as
# one process on one GPU with twice the accumulation, as tests/distributed.rs checks on the CPU:
#   1. the default config, 200 steps: the loss logged every 10 steps on 2 ranks within
#      $NCCL_CHECK_TOL (default 1e-4 on GPUs: NCCL's ring sums in another order than one
#      process's accumulation, and the GPU's kernels are not bit-reproducible across launches;
#      1e-5 on the CPU, one thread per rank) of the one process's, and the final val loss too;
#   2. tokens/s of the two runs, and their ratio (on the default model, launch-bound on a GPU,
#      expect little; pass --set model.n_layer=12 ... for a model that fills the GPUs).
# It ends in one line:
#   nccl_check=<ok|failed:what> max_loss_diff=<..> tokens_per_s_1=<..> tokens_per_s_2=<..> scaling=<2 ranks / 1>
# NCCL comes from NVIDIA's libnccl2/libnccl-dev or the PyPI wheel nvidia-nccl-cu12 (`-cu11` for
# CUDA 11): NCCL_LIB_DIR=<its nvidia/nccl/lib> puts it on the build's and the ranks' library
# paths (with a libnccl.so link beside libnccl.so.2 for the linker).
# NCCL_CHECK_DEVICE=cpu runs the same check on the CPU over MPI (--features mpi): how this
# script itself is tried on a machine without GPUs.
# Usage: scripts/nccl-check.sh [--steps S] [--set K=V]...
set -uo pipefail
cd "$(dirname "$0")/.."
device=${NCCL_CHECK_DEVICE:-cuda}
steps=200 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "nccl_check=failed:$1 max_loss_diff=${diff:-nan} tokens_per_s_1=0 tokens_per_s_2=0 scaling=0"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "$device" = cuda ]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  [ "$gpus" -ge 2 ] || fail "needs-2-gpus-found-$gpus"
  nvidia-smi --query-gpu=name --format=csv,noheader | head -2
  if [ -n "${NCCL_LIB_DIR:-}" ]; then
    [ -e "$NCCL_LIB_DIR/libnccl.so" ] || ln -s libnccl.so.2 "$NCCL_LIB_DIR/libnccl.so" || fail "nccl-link"
    export LIBRARY_PATH=$NCCL_LIB_DIR:${LIBRARY_PATH:-} LD_LIBRARY_PATH=$NCCL_LIB_DIR:${LD_LIBRARY_PATH:-}
  fi
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
  taper=$(scripts/taper-bin.sh --features nccl --quiet) || fail "build"
  tolerance=${NCCL_CHECK_TOL:-1e-4}
else
  taper=$(scripts/taper-bin.sh --features mpi --quiet) || fail "build"
  tolerance=${NCCL_CHECK_TOL:-1e-5}
fi
common=(train configs/gpt-shakespeare-char.toml --set train.steps="$steps" --set train.log_every=10
  --set train.eval_every="$steps" --set schedule.warmup_steps=$((steps / 10)) --set checkpoint.every=0 --set train.device="$device" --quiet "${extra[@]}")

echo "== 1. one process on one $device device, grad_accum 2; then 2 ranks, grad_accum 1 each"
RAYON_NUM_THREADS=1 "$taper" "${common[@]}" --set train.grad_accum=2 --set checkpoint.dir="$work/one" || fail "one-process"
mpirun -n 2 -x RAYON_NUM_THREADS=1 ${LD_LIBRARY_PATH:+-x LD_LIBRARY_PATH} "$taper" "${common[@]}" --set train.grad_accum=1 \
  --set checkpoint.dir="$work/two" || fail "two-ranks"
diff=$(python3 - "$work" <<'EOF'
import json, sys
def losses(run):
    records = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl")]
    return {(r["step"], k): r[k] for r in records for k in ("loss", "val_loss") if k in r}
one, two = losses("one"), losses("two")
assert one.keys() == two.keys() and len(one) > 2, (sorted(one), sorted(two))
for key in sorted(one):
    print(f"step {key[0]} {key[1]}: 1 process {one[key]:.6f}, 2 ranks {two[key]:.6f}", file=sys.stderr)
print(max(abs(one[k] - two[k]) for k in one))
EOF
) || fail "metrics"
python3 -c "import sys; sys.exit(0 if $diff <= $tolerance else 1)" || fail "loss-differs-by-$diff"

echo "== 2. speed"
tps() { sed -n 's/.*"tokens_per_s": *\([0-9.e+-]*\).*/\1/p' "$work/$1/summary.json"; }
one=$(tps one) two=$(tps two)
scaling=$(python3 -c "print(f'{$two / $one:.3f}')")
echo "nccl_check=ok max_loss_diff=$diff tokens_per_s_1=$one tokens_per_s_2=$two scaling=$scaling"
