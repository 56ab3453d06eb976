#!/usr/bin/env bash
# Checks that a causal-lm run's Hugging Face export (GPT2LMHeadModel or LlamaForCausalLM)
# scores text as taper does: exports RUN_DIR, runs `taper eval --json` on TEXT_FILE, and loads
# the export with transformers' AutoModelForCausalLM (scripts/check-hf-decoder.py) to score the
# same windows. Needs PyTorch and transformers (not part of CI): set HF_PYTHON to a python that
# has them, or let the script make a virtual environment in .cache/hf-venv.
# Usage: scripts/check-hf-decoder.sh RUN_DIR TEXT_FILE [CHECKPOINT]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/check-hf-decoder.sh RUN_DIR TEXT_FILE [CHECKPOINT]}
text=${2:?usage: scripts/check-hf-decoder.sh RUN_DIR TEXT_FILE [CHECKPOINT]}
checkpoint=${3:-best}
python=$(scripts/hf-python.sh)
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./target/release/taper export "$run" --format hf --out "$out/export" --checkpoint "$checkpoint"
loss=$(./target/release/taper eval "$run" --file "$text" --checkpoint "$checkpoint" --json |
  "$python" -c 'import json, sys; print(repr(json.load(sys.stdin)["val_loss"]))')
block=$(sed -n 's/^block_size = \([0-9]*\)/\1/p' "$run/config.toml")
"$python" scripts/check-hf-decoder.py "$out/export" "$text" "$block" "$loss"
