#!/usr/bin/env bash
# Builds the shipped sequence-to-sequence example data/numbers/{train,val}.tsv: numbers in
# digits -> the same numbers in English words (see make-numbers-data.py). Re-running
# reproduces the files exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/numbers
python3 scripts/make-numbers-data.py
for part in train val; do mv "data/numbers/$part.tsv.tmp" "data/numbers/$part.tsv"; done
sha256sum data/numbers/*.tsv
