#!/usr/bin/env bash
# Checks that a causal-lm run's Hugging Face export (GPT2LMHeadModel or LlamaForCausalLM), or a
# T5-shaped seq2seq run's (T5ForConditionalGeneration), scores FILE as taper does: exports
# RUN_DIR, runs `taper eval --json` on FILE (text; a source/target TSV for seq2seq), and loads
# the export with transformers (scripts/check-hf-decoder.py) to score the same windows or pairs. Needs PyTorch and transformers (not part of CI): set HF_PYTHON to a python that
# has them, or let the script make a virtual environment in .cache/hf-venv.
# Usage: scripts/check-hf-decoder.sh RUN_DIR FILE [CHECKPOINT]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/check-hf-decoder.sh RUN_DIR FILE [CHECKPOINT]}
text=${2:?usage: scripts/check-hf-decoder.sh RUN_DIR FILE [CHECKPOINT]}
checkpoint=${3:-best}
python=$(scripts/hf-python.sh)
taper=$(scripts/taper-bin.sh --quiet)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$taper" export "$run" --format hf --out "$out/export" --checkpoint "$checkpoint"
loss=$("$taper" eval "$run" --file "$text" --checkpoint "$checkpoint" --json |
  "$python" -c 'import json, sys; print(repr(json.load(sys.stdin)["val_loss"]))')
block=$(sed -n 's/^block_size = \([0-9]*\)/\1/p' "$run/config.toml")
"$python" scripts/check-hf-decoder.py "$out/export" "$text" "$block" "$loss"
