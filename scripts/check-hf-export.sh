#!/usr/bin/env bash
# Checks that a classification or token-classification run's Hugging Face export predicts what taper predicts:
# exports RUN_DIR, runs `taper predict` on INPUT, and loads the export with transformers'
# AutoModelForSequenceClassification or AutoModelForTokenClassification
# (scripts/check-hf-export.py) to compare probabilities (and a tagger's tags).
# Needs PyTorch and transformers (a few GB; not part of CI): set HF_PYTHON to a python that has
# them, or let the script make a virtual environment in .cache/hf-venv.
# Usage: scripts/check-hf-export.sh RUN_DIR INPUT [MAX_LEN]
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/check-hf-export.sh RUN_DIR INPUT [MAX_LEN]}
input=${2:?usage: scripts/check-hf-export.sh RUN_DIR INPUT [MAX_LEN]}
max_len=${3:-$(sed -n 's/^max_len = \([0-9]*\)/\1/p' "$run/config.toml")}
max_len=${max_len:-512}
python=$(scripts/hf-python.sh)
taper=$(scripts/taper-bin.sh --quiet)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$taper" export "$run" --format hf --out "$out/export"
"$taper" predict "$run" --input "$input" --output "$out/predictions.jsonl"
"$python" scripts/check-hf-export.py "$out/export" "$out/predictions.jsonl" "$max_len"
