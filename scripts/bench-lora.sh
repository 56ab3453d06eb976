#!/usr/bin/env bash
# LoRA against full fine-tuning on the shipped sentiment example (configs/bert-finetune-sentiment.toml,
# all-MiniLM-L6-v2: scripts/fetch-minilm.sh first): the same steps, alternated so that machine
# noise hits both; prints each run's tokens/s, peak RSS (summary.json) and final accuracy, and
# the last line
#   lora_speed=<LoRA tokens/s / full tokens/s> lora_rss=<LoRA peak RSS / full peak RSS>
# LoRA: configs/bert-lora-sentiment.toml (rank 8, alpha 16, on q_proj and v_proj, lr 1e-3; full:
# the sentiment config's 5e-5).
# Usage: scripts/bench-lora.sh [--rounds N] [--steps S] [--set K=V]...  (--set applies to the LoRA runs)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=2 steps=300 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
taper=$(scripts/taper-bin.sh --quiet)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--set train.steps="$steps" --set train.eval_every="$steps" --set checkpoint.every=0 --quiet)
field() { sed -n "s/.*\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1/summary.json"; }
accuracy() { grep '"accuracy"' "$1/metrics.jsonl" | tail -1 | sed 's/.*"accuracy":\([0-9.e+-]*\).*/\1/'; }
speed=0 rss=0
for round in $(seq "$rounds"); do
  "$taper" train configs/bert-finetune-sentiment.toml "${common[@]}" --set checkpoint.dir="$work/full-$round"
  "$taper" train configs/bert-lora-sentiment.toml "${common[@]}" "${extra[@]}" --set checkpoint.dir="$work/lora-$round"
  for kind in full lora; do
    run="$work/$kind-$round"
    echo "round $round $kind: $(field "$run" tokens_per_s) tok/s, peak RSS $(field "$run" peak_rss_mb) MB, accuracy $(accuracy "$run")"
  done
  speed=$(python3 -c "print($speed + $(field "$work/lora-$round" tokens_per_s) / $(field "$work/full-$round" tokens_per_s))")
  rss=$(python3 -c "print($rss + $(field "$work/lora-$round" peak_rss_mb) / $(field "$work/full-$round" peak_rss_mb))")
done
python3 -c "print(f'lora_speed={$speed / $rounds:.3f} lora_rss={$rss / $rounds:.3f}')"
