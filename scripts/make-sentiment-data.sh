#!/usr/bin/env bash
# Builds the shipped fine-tuning example data/sentiment/{train,val}.csv: sentences of
# data/shakespeare.txt labelled positive/negative by the VADER lexicon (PyPI vaderSentiment
# 3.3.2, fetched with pip download; see make-sentiment-data.py). Re-running reproduces the files.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps vaderSentiment==3.3.2 -d "$work"
python3 -m zipfile -e "$work"/vaderSentiment-3.3.2-*.whl "$work/vader"
mkdir -p data/sentiment
python3 scripts/make-sentiment-data.py "$work/vader"
for part in train val; do mv "data/sentiment/$part.csv.tmp" "data/sentiment/$part.csv"; done
sha256sum data/sentiment/*.csv
