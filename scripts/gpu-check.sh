#!/usr/bin/env bash
# The one command for the day a GPU is lent (issue 19): builds taper with --features cuda and,
# in a few minutes, checks on the GPU what the CPU tests check here:
#   1. the default config trains in f32, bf16 and f16 (dynamic loss scaling), its logged
#      losses close to the CPU's at the same steps (f32: within 2e-3; bf16 and f16: within
#      5e-2; the GPU's kernels sum in another order, and bf16 keeps 8 bits of mantissa in the
#      products, f16 11, so the curves agree to rounding, not bits; the CPU f32 reference runs
#      in the same script; on the CPU, f16 with scaling is within 2.2e-5 of f32 over these
#      steps, without it 2.2e-4);
#   2. a resume from a mid-run checkpoint ends at the uninterrupted run's loss (within 1e-6);
#   3. sampling with the KV-cache gives the uncached tokens;
#   4. MiniLM fine-tunes a few steps (scripts/fetch-minilm.sh), its loss falling;
#   5. GPT-2 small (bf16, context 1024) trains for a few steps: tokens/s and MFU (6N + 12 L T d
#      FLOPs per token, PaLM's count, over the card's dense bf16 peak from nvidia-smi's name).
# Every line it prints ends in one line:
#   gpu_check=<ok|failed:what> tokens_per_s=<GPT-2 small> mfu=<fraction>
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (without building for CUDA, and a small
# model for step 5): how this script itself is tried on a machine without a GPU.
# Usage: scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "gpu_check=failed:$1 tokens_per_s=${tps:-0} mfu=${mfu:-0}"; exit 1; }
tps=0 mfu=0
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || fail "no-nvidia-smi"
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
  taper=$(scripts/taper-bin.sh --features cuda --quiet) || fail "build"
else
  taper=$(scripts/taper-bin.sh --quiet) || fail "build"
fi
# The loss logged at step $2 of run $1 (the last record of it: a resumed run logs it again).
loss_at() { python3 -c "
import json
records = [json.loads(line) for line in open('$1/metrics.jsonl')]
found = [r['loss'] for r in records if r.get('step') == $2 and 'loss' in r]
print(found[-1])"; }
close() { python3 -c "import sys; sys.exit(0 if abs($1 - $2) <= $3 else 1)"; }
base=(configs/gpt-shakespeare-char.toml --set train.steps=200 --set train.log_every=50 --set train.eval_every=0
  --set checkpoint.every=100 --quiet)

echo "== 1. the default config: CPU reference, then $device f32, bf16 and f16 (200 steps)"
"$taper" train "${base[@]}" --set train.device=cpu --set checkpoint.dir="$work/cpu" || fail "cpu-train"
for dtype in f32 bf16 f16; do
  "$taper" train "${base[@]}" --set train.device="$device" --set train.dtype="$dtype" \
    --set checkpoint.dir="$work/$dtype" || fail "train-$dtype"
  tolerance=$([ "$dtype" = f32 ] && echo 2e-3 || echo 5e-2)
  for step in 50 100 150 200; do
    ref=$(loss_at "$work/cpu" $step) got=$(loss_at "$work/$dtype" $step)
    echo "step $step: cpu $ref, $device $dtype $got"
    close "$ref" "$got" "$tolerance" || fail "$dtype-loss-step-$step"
  done
done

echo "== 2. resume from step 100 ends where the uninterrupted run did"
want=$(loss_at "$work/f32" 200)
"$taper" train --resume "$work/f32" --checkpoint step-00000100 --quiet || fail "resume"
got=$(loss_at "$work/f32" 200)
echo "step 200: uninterrupted $want, resumed $got"
close "$want" "$got" 1e-6 || fail "resume-differs"

echo "== 3. sampling with and without the KV-cache"
cached=$("$taper" generate "$work/f32" --checkpoint latest --prompt "ROMEO:" --max-new-tokens 64 --temperature 0 --device "$device") || fail "generate"
uncached=$("$taper" generate "$work/f32" --checkpoint latest --prompt "ROMEO:" --max-new-tokens 64 --temperature 0 --no-cache --device "$device") || fail "generate-no-cache"
[ "$cached" = "$uncached" ] || fail "cache-differs"
echo "$cached" | head -3

echo "== 4. MiniLM fine-tunes"
scripts/fetch-minilm.sh >/dev/null || fail "fetch-minilm"
"$taper" train configs/bert-finetune-sentiment.toml --set train.device="$device" --set train.steps=40 \
  --set train.log_every=10 --set train.eval_every=40 --set checkpoint.dir="$work/minilm" --quiet || fail "minilm"
first=$(loss_at "$work/minilm" 10) last=$(loss_at "$work/minilm" 40)
echo "MiniLM loss: step 10 $first, step 40 $last"
python3 -c "import sys; sys.exit(0 if $last < $first else 1)" || fail "minilm-loss"

echo "== 5. GPT-2 small, bf16, context 1024"
if [ "$device" = cuda ]; then
  shape=(--set train.dtype=bf16 --set train.batch_size=8 --set train.steps=30 --set schedule.warmup_steps=2)
else
  shape=(--set model.n_layer=2 --set model.d_model=128 --set model.n_head=2 --set model.block_size=128
    --set train.batch_size=2 --set train.steps=6 --set schedule.warmup_steps=2)
fi
"$taper" train configs/gpt2-small.toml "${shape[@]}" --set train.device="$device" --set train.log_every=5 \
  --set train.eval_every=0 --set checkpoint.every=0 --set checkpoint.dir="$work/gpt2" --quiet || fail "gpt2-small"
tps=$(python3 -c "import json; print(round(json.load(open('$work/gpt2/summary.json'))['tokens_per_s']))")
mfu=$(python3 - "$work/gpt2" "$device" <<'EOF'
import json, re, subprocess, sys
run, device = sys.argv[1], sys.argv[2]
summary = json.load(open(f"{run}/summary.json"))
config = open(f"{run}/config.toml").read()
key = lambda k: int(re.search(rf"^{k} = (\d+)", config, re.M).group(1))
layers, width, context = key("n_layer"), key("d_model"), key("block_size")
flops_per_token = 6 * summary["params"] + 12 * layers * context * width
if device != "cuda":
    print("n/a")
    sys.exit()
name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout
# Dense bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (SXM parts where both exist).
peaks = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "V100": 125, "T4": 65}
peak = next((v for k, v in peaks.items() if k in name), None)
print(f"{summary['tokens_per_s'] * flops_per_token / (peak * 1e12):.3f}" if peak else "unknown-card")
EOF
)
echo "GPT-2 small: $tps tokens/s, MFU $mfu"
echo "gpu_check=ok tokens_per_s=$tps mfu=$mfu"
