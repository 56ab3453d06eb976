#!/usr/bin/env bash
# Remakes tests/fixtures/tiny-t5-numbers (a tiny T5 trained by transformers on data/numbers, and
# transformers' beam-search outputs for it: scripts/make-beam-fixture.py). Needs PyTorch and
# transformers: set HF_PYTHON to a python that has them, or let the script make a virtual
# environment in .cache/hf-venv. Not part of CI: the fixture is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(scripts/hf-python.sh)
"$python" scripts/make-beam-fixture.py
