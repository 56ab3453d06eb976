#!/usr/bin/env bash
# Runs every test: fetches the test weights once (scripts/fetch-minilm.sh), then the suite in
# release mode (debug-mode candle is too slow for the training tests), with MPI where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-minilm.sh
# The data-parallel tests (tests/distributed.rs) run under mpirun when Open MPI is installed
# (.ci/run installs it; README: "Many processes"); without it they are left out, and said so.
if command -v mpirun >/dev/null && command -v mpicc >/dev/null; then
  cargo test --release --features mpi "$@"
else
  echo "test.sh: no Open MPI (mpirun, mpicc): the data-parallel tests are left out" >&2
  cargo test --release "$@"
fi
