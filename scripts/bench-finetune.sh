#!/usr/bin/env bash
# Encoder fine-tuning, taper against Hugging Face transformers + PyTorch: the same pretrained
# model fine-tuned as a sequence classifier on the same shipped rows (data/sentiment, 1556
# train / 390 val), batch 32, max_len 64, the same optimizer and schedule, alternated
# (taper, transformers, taper, ...) so that machine noise hits both. Two models:
#   bert     all-MiniLM-L6-v2 (BERT, 6 x 384; scripts/fetch-minilm.sh first)
#   roberta  a RoBERTa of the same shape (random weights made by transformers, the byte-level BPE
#            tokenizer of tests/fixtures/tiny-roberta-cls), into .cache/bench/roberta-6x384
# Prints each run's ms/step, samples/s, peak RSS and val accuracy, the CPU and its AVX-512 flag,
# one ratio line per model, and last (the bert model's):
#   samples_per_s_ratio=<taper / transformers> rss_ratio=<taper / transformers>
# Needs PyTorch and transformers (HF_PYTHON, or .cache/hf-venv made on first use; not CI).
# Usage: scripts/bench-finetune.sh [--steps N] [--pairs P] [--models bert,roberta] [--threads T]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=100 pairs=2 models=bert,roberta threads=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
python=$(scripts/hf-python.sh)
taper=$(scripts/taper-bin.sh --quiet)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
batch=32 max_len=64 lr=5e-5 warmup=10
echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores, threads $threads," \
  "avx512f: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"

model_dir() {
  case $1 in
    bert)
      dir=.cache/models/all-MiniLM-L6-v2
      [ -f "$dir/model.safetensors" ] || { echo "no $dir: run scripts/fetch-minilm.sh first" >&2; exit 1; } ;;
    roberta)
      dir=.cache/bench/roberta-6x384
      if [ ! -f "$dir/model.safetensors" ]; then
        "$python" - "$dir" <<'EOF'
import shutil, sys
import torch
from transformers import RobertaConfig, RobertaModel
out, tok = sys.argv[1], "tests/fixtures/tiny-roberta-cls"
torch.manual_seed(0)
config = RobertaConfig(vocab_size=320, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                       intermediate_size=1536, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                       bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
RobertaModel(config, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(f"{tok}/{f}", f"{out}/{f}")
EOF
      fi ;;
    *) echo "unknown model $1 (bert or roberta)" >&2; exit 2 ;;
  esac
  echo "$dir"
}

field() { sed -n "s/.*\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1"; }
last=""
for model in ${models//,/ }; do
  dir=$(model_dir "$model")
  speed=0 rss=0
  for pair in $(seq "$pairs"); do
    run="$work/$model-$pair"
    RAYON_NUM_THREADS=$threads "$taper" train configs/bert-finetune-sentiment.toml --quiet \
      --set model.init_from="$dir" --set train.steps="$steps" --set train.batch_size=$batch \
      --set task.max_len=$max_len --set optim.lr=$lr --set schedule.warmup_steps=$warmup \
      --set train.eval_every=0 --set checkpoint.every=0 --set checkpoint.dir="$run"
    "$taper" eval "$run" --checkpoint latest > "$run/eval.txt"
    ours_ms=$(field "$run/summary.json" ms_per_step)
    ours_rss=$(field "$run/summary.json" peak_rss_mb)
    ours_acc=$(sed -n 's/^ *accuracy *\([0-9.]*\).*/\1/p' "$run/eval.txt")
    theirs=$("$python" scripts/bench-finetune.py "$dir" data/sentiment/train.csv data/sentiment/val.csv \
      "$steps" $batch $max_len $lr $warmup "$threads" 2>/dev/null | tail -1)
    echo "$theirs" > "$work/theirs.json"
    their_ms=$(field "$work/theirs.json" ms_per_step)
    their_rss=$(field "$work/theirs.json" peak_rss_mb)
    their_acc=$(field "$work/theirs.json" val_accuracy)
    python3 - "$model" "$pair" "$ours_ms" "$ours_rss" "$ours_acc" "$their_ms" "$their_rss" "$their_acc" "$batch" <<'EOF'
import sys
model, pair, ms, rss, acc, tms, trss, tacc, batch = sys.argv[1:]
for who, m, r, a in [("taper", ms, rss, acc), ("transformers", tms, trss, tacc)]:
    print(f"{model} pair {pair} {who}: {float(m):.1f} ms/step, {1000 * int(batch) / float(m):.1f} samples/s, "
          f"peak RSS {float(r):.0f} MB, val accuracy {float(a):.3f}")
EOF
    speed=$(python3 -c "print($speed + $their_ms / $ours_ms)")
    rss=$(python3 -c "print($rss + $ours_rss / $their_rss)")
  done
  line=$(python3 -c "print(f'samples_per_s_ratio={$speed / $pairs:.3f} rss_ratio={$rss / $pairs:.3f}')")
  echo "$model: $line"
  [ "$model" = bert ] && last=$line
done
[ -n "$last" ] && echo "$last"
