#!/usr/bin/env bash
# Prints the path of a python that has PyTorch and transformers, for the scripts that compare
# taper with Hugging Face: $HF_PYTHON when it has them, else .cache/hf-venv (made on first use;
# a few GB, not part of CI). Run from the repository root.
set -euo pipefail
python=${HF_PYTHON:-.cache/hf-venv/bin/python}
if ! "$python" -c "import torch, transformers" 2>/dev/null; then
  python3 -m venv .cache/hf-venv >&2
  .cache/hf-venv/bin/pip install --quiet torch transformers >&2
  python=.cache/hf-venv/bin/python
fi
echo "$python"
