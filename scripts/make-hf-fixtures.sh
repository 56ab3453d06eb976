#!/usr/bin/env bash
# Remakes tests/fixtures/tiny-gpt2, tiny-llama, tiny-qwen2, tiny-t5 and tiny-t5-v1_1 with Hugging Face transformers
# (scripts/make-hf-fixtures.py). Needs PyTorch and transformers: set HF_PYTHON to a python
# that has them, or let the script make a virtual environment in .cache/hf-venv. Not part of
# CI: the fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(scripts/hf-python.sh)
"$python" scripts/make-hf-fixtures.py
