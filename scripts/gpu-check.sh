#!/usr/bin/env bash
# The one command for a lent GPU: in a few minutes, checks on the GPU what the CPU tests check
# here:
#   1. the default config trains in f32, bf16 and f16 (dynamic loss scaling), its logged
#      losses close to the CPU's at the same steps (f32: within 2e-3; bf16 and f16: within
#      5e-2; the GPU's kernels sum in another order, and bf16 keeps 8 bits of mantissa in the
#      products, f16 11, so the curves agree to rounding, not bits; the CPU f32 reference runs
#      in the same script; on the CPU, f16 with scaling is within 2.2e-5 of f32 over these
#      steps, without it 2.2e-4);
#   2. a resume from a mid-run checkpoint ends at the uninterrupted run's loss (within 1e-6);
#   3. sampling with the KV-cache gives the uncached tokens;
#   4. MiniLM fine-tunes a few steps, its loss falling;
#   5. GPT-2 small (bf16, context 1024, batch 8) trains 30 steps: taper's tokens/s and MFU
#      (its summary.json: 6N + 12 L T d FLOPs per token over the card's dense bf16 peak), and
#      the same step in eager PyTorch (scripts/gpu-reference.py) on the same card: the ratio.
# Every run of it ends in one line:
#   gpu_check=<ok|failed:what> tokens_per_s=<GPT-2 small> mfu=<fraction> torch_tokens_per_s=<..> ratio=<taper/torch>
# Two ways to run it:
#   scripts/gpu-check.sh                  builds taper with --features cuda here (cargo, nvcc);
#   scripts/gpu-check.sh --prebuilt DIR   runs the bundle scripts/gpu-bundle.sh made, with no
#       cargo, no network and no python package but torch: the lent machines' way. It prints
#       the CUDA libraries the binary links and where it found them (PyTorch's nvidia wheels).
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (a small model for step 5): how this
# script itself is tried on a machine without a GPU.
set -uo pipefail
device=${GPU_CHECK_DEVICE:-cuda}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tps=0 mfu=0 ttps=n/a ratio=n/a
fail() { echo "gpu_check=failed:$1 tokens_per_s=$tps mfu=$mfu torch_tokens_per_s=$ttps ratio=$ratio"; exit 1; }
unxz() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$@"; }

# Where PyTorch's wheels (else the system, else $GPU_CHECK_LIBRARY_ROOTS, colon-separated) keep
# the CUDA libraries listed in $1: a search path.
cuda_library_path() {
  python3 - "$1" <<'EOF'
import glob, os, site, sys
wanted = [n for n in open(sys.argv[1]).read().split() if n.startswith(("libcublas", "libcurand", "libnvrtc", "libcudart"))]
roots = site.getsitepackages() + [site.getusersitepackages(), "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]
roots += [r for r in os.environ.get("GPU_CHECK_LIBRARY_ROOTS", "").split(":") if r]
dirs = []
for name in wanted:
    hits = sorted(h for r in roots for h in glob.glob(f"{r}/**/{name}", recursive=True))
    if not hits:
        sys.exit(f"no {name} under {', '.join(roots)}")
    if os.path.dirname(hits[0]) not in dirs:
        dirs.append(os.path.dirname(hits[0]))
print(":".join(dirs))
EOF
}

minilm=()
if [ "${1:-}" = --prebuilt ]; then
  [ -d "${2:-}" ] || fail "usage:gpu-check.sh--prebuilt-DIR"
  cd "$2" || fail "prebuilt-dir"
  taper=$work/taper
  { unxz taper.xz "$taper" && chmod +x "$taper"; } || fail "unpack-taper"
  { mkdir -p "$work/minilm" && cp models/all-MiniLM-L6-v2/*.json "$work/minilm/" &&
    unxz models/all-MiniLM-L6-v2/model.safetensors.xz "$work/minilm/model.safetensors"; } || fail "unpack-minilm"
  minilm=(--set model.init_from="$work/minilm")
  echo "bundle: taper $(cat commit.txt), $(du -sh . | cut -f1); it links: $(tr '\n' ' ' < needs.txt)"
  # The binary links them whichever device it runs on.
  found=$(cuda_library_path needs.txt) || fail "cuda-libraries"
  export LD_LIBRARY_PATH=$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "the dynamic loader resolves:"
  ldd "$taper" | grep -E "libcuda|cublas|curand|nvrtc|cudart"
  missing=$(ldd "$taper" | awk '/not found/ {print $1; exit}')
  [ -z "$missing" ] || fail "unresolved-$missing"
else
  cd "$(dirname "$0")/.." || fail "cd"
  if [ "$device" = cuda ]; then
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
    taper=$(scripts/taper-bin.sh --features cuda --quiet) || fail "build"
  else
    taper=$(scripts/taper-bin.sh --quiet) || fail "build"
  fi
  scripts/fetch-minilm.sh >/dev/null || fail "fetch-minilm"
fi
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "no-nvidia-smi"
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
"$taper" train configs/bert-finetune-sentiment.toml "${minilm[@]}" --set train.device="$device" --set train.steps=40 \
  --set train.log_every=10 --set train.eval_every=40 --set checkpoint.dir="$work/minilm-run" --quiet || fail "minilm"
first=$(loss_at "$work/minilm-run" 10) last=$(loss_at "$work/minilm-run" 40)
echo "MiniLM loss: step 10 $first, step 40 $last"
python3 -c "import sys; sys.exit(0 if $last < $first else 1)" || fail "minilm-loss"

echo "== 5. GPT-2 small (on a GPU: bf16, context 1024, batch 8; on the CPU a small model): taper, then PyTorch"
if [ "$device" = cuda ]; then
  shape=(--set train.dtype=bf16 --set train.batch_size=8 --set train.grad_accum=1 --set train.steps=30
    --set schedule.warmup_steps=2)
  ref=()
else
  shape=(--set model.n_layer=2 --set model.d_model=128 --set model.n_head=2 --set model.block_size=128
    --set train.dtype=f32 --set train.batch_size=2 --set train.grad_accum=1 --set train.steps=6 --set schedule.warmup_steps=2)
  ref=(--layers 2 --width 128 --heads 2 --context 128 --batch 2 --steps 6 --untimed 2 --device cpu)
fi
"$taper" train configs/gpt2-small.toml "${shape[@]}" --set train.device="$device" --set train.log_every=5 \
  --set train.eval_every=0 --set checkpoint.every=0 --set checkpoint.dir="$work/gpt2" --quiet || fail "gpt2-small"
read -r tps mfu peak vocab < <(python3 - "$work/gpt2" <<'EOF'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
tokenizer = json.load(open(f"{sys.argv[1]}/tokenizer.json"))
vocab = len(tokenizer["model"]["vocab"]) + len(tokenizer.get("added_tokens", []))
print(round(summary["tokens_per_s"]), f"{summary.get('mfu', 0):.4f}", summary.get("peak_flops", 0), vocab)
print(f"taper: {summary['tokens_per_s']:.0f} tokens/s, {summary['ms_per_step']:.1f} ms/step, mfu {summary.get('mfu')}"
      f" (peak: {summary.get('peak_source', 'none known')})", file=sys.stderr)
EOF
) || fail "gpt2-summary"
if python3 -c "import torch" 2>/dev/null; then
  reference=$(python3 scripts/gpu-reference.py --vocab "$vocab" --peak-flops "$peak" "${ref[@]}" | tail -1) ||
    fail "torch-reference"
  echo "PyTorch: $reference"
  read -r ttps ratio < <(python3 -c 'import json, sys; t = json.loads(sys.argv[1])["tokens_per_s"]; print(round(t), "%.3f" % (float(sys.argv[2]) / t))' "$reference" "$tps")
else
  echo "PyTorch: not installed here, no reference"
fi
echo "gpu_check=ok tokens_per_s=$tps mfu=$mfu torch_tokens_per_s=$ttps ratio=$ratio"
