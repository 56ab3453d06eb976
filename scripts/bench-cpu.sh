#!/usr/bin/env bash
# Training-step speed and memory of taper against the PyTorch eager reference
# (../shared/bench/torch_gpt.py), on the same model, corpus, batch, context, optimizer and
# schedule. Runs alternate (taper, PyTorch, taper, PyTorch, ...) so machine noise hits both;
# each pair gives ratios, and the medians are reported. The last line is exactly
#   step_time_ratio=<taper ms/step / PyTorch ms/step> rss_ratio=<taper peak RSS / PyTorch peak RSS>
#
# Usage: scripts/bench-cpu.sh [--steps N] [--pairs P] [--threads T] [--wide] [--arch gpt|llama]
#   --wide: 6 layers, 6 heads, 384 wide, context 256, batch 8 (default: the shipped config's
#           4 layers, 4 heads, 128 wide, context 64, batch 12)
#   --threads: threads on both sides (default: each library's default)
#   --arch llama: configs/llama-shakespeare-char.toml against torch_gpt.py --arch llama
#           --kv-heads 2 (RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=200 pairs=3 threads="" wide=0 arch=gpt
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --wide) wide=1; shift ;;
    --arch) arch=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

shared=${TAPER_SHARED:-../shared}
py=$("$shared/bench/setup_torch.sh" | tail -1)
taper=$(scripts/taper-bin.sh --quiet)
corpus=data/shakespeare.txt
config=configs/gpt-shakespeare-char.toml
torch_arch=()
case "$arch" in
  gpt) ;;
  llama) config=configs/llama-shakespeare-char.toml; torch_arch=(--arch llama --kv-heads 2) ;;
  *) echo "--arch must be gpt or llama, got $arch" >&2; exit 2 ;;
esac

# The shipped warmup (100 steps), or half the run if that is shorter; the same on both sides.
warmup=$(( steps < 200 ? steps / 2 : 100 ))
set_args=(--set train.steps="$steps" --set schedule.warmup_steps="$warmup" --set train.eval_every="$steps" --set train.log_every=50
          --set checkpoint.every=0 --set train.device=cpu)
torch_args=(--corpus "$corpus" --steps "$steps" --warmup-steps "$warmup" ${torch_arch[@]+"${torch_arch[@]}"})
if [ "$wide" = 1 ]; then
  set_args+=(--set model.n_layer=6 --set model.n_head=6 --set model.d_model=384
             --set model.block_size=256 --set train.batch_size=8)
  torch_args+=(--layers 6 --heads 6 --dim 384 --block 256 --batch 8)
fi
env_prefix=()
if [ -n "$threads" ]; then
  env_prefix=(env RAYON_NUM_THREADS="$threads")
  torch_args+=(--threads "$threads")
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(uname -m); steps=$steps pairs=$pairs threads=${threads:-default} wide=$wide arch=$arch" >&2
: > "$work/pairs.tsv"
for i in $(seq 1 "$pairs"); do
  run="$work/taper-$i"
  "${env_prefix[@]}" "$taper" train "$config" "${set_args[@]}" --set checkpoint.dir="$run" --quiet
  taper_json=$(cat "$run/summary.json")
  # CPU against CPU: keep PyTorch off any GPU it might find.
  torch_json=$(CUDA_VISIBLE_DEVICES= "$py" "$shared/bench/torch_gpt.py" "${torch_args[@]}" | tail -1)
  python3 - "$taper_json" "$torch_json" "$i" >> "$work/pairs.tsv" <<'PY'
import json, sys
t, p, i = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
print(f"pair {i}: taper {t['tokens_per_s']:.0f} tok/s {t['ms_per_step']:.1f} ms/step {t['peak_rss_mb']:.0f} MB "
      f"val {t['val_loss']:.4f} | pytorch {p['tokens_per_s']:.0f} tok/s {p['ms_per_step']:.1f} ms/step "
      f"{p['peak_rss_mb']:.0f} MB val {p['val_loss']:.4f}", file=sys.stderr)
print(t['ms_per_step'] / p['ms_per_step'], t['peak_rss_mb'] / p['peak_rss_mb'],
      t['tokens_per_s'], p['tokens_per_s'], t['peak_rss_mb'], p['peak_rss_mb'], sep="\t")
PY
done
python3 - "$work/pairs.tsv" <<'PY'
import statistics, sys
rows = [list(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
med = lambda k: statistics.median(r[k] for r in rows)
print(f"taper tokens/s {med(2):.0f}  pytorch tokens/s {med(3):.0f}  "
      f"taper peak RSS {med(4):.0f} MB  pytorch peak RSS {med(5):.0f} MB  (medians of {len(rows)} pairs)")
print(f"step_time_ratio={med(0):.3f} rss_ratio={med(1):.3f}")
PY
