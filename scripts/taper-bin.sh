#!/usr/bin/env bash
# Builds taper in release (extra cargo arguments pass through, e.g. --features mpi) and prints
# the path of the binary cargo made, wherever it put it (CARGO_TARGET_DIR included): the scripts
# that run taper ask here instead of assuming ./target/release/taper.
# Usage: bin=$(scripts/taper-bin.sh [--features F])
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin taper --message-format=json "$@" | python3 -c '
import json, sys
made = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "taper"]
if not made:
    sys.exit("taper-bin.sh: cargo reported no taper binary")
print(made[-1])'
