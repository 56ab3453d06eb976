#!/usr/bin/env bash
# Remakes tests/fixtures/tiny-roberta-* and tiny-xlm-roberta-* (random RoBERTa-architecture
# encoders with their tokenizers and outputs: scripts/make-encoder-fixtures.py). Needs PyTorch and
# transformers: set HF_PYTHON to a python that has them, or let the script make a virtual
# environment in .cache/hf-venv. Not part of CI: the fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(scripts/hf-python.sh)
"$python" scripts/make-encoder-fixtures.py
