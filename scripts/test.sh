#!/usr/bin/env bash
# Runs every test: fetches the test weights once (scripts/fetch-minilm.sh), then the suite in
# release mode (debug-mode candle is too slow for the training tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-minilm.sh
cargo test --release "$@"
