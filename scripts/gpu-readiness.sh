#!/usr/bin/env bash
# Proves, without a GPU, that the bundle scripts/gpu-bundle.sh made runs as a lent GPU machine
# will run it: copies exactly the bundle into an empty directory, takes cargo and rustc off the
# PATH, and runs its own scripts/gpu-check.sh --prebuilt there with GPU_CHECK_DEVICE=cpu (the
# CUDA build's CPU path) to `gpu_check=ok`. The CUDA libraries the binary links come from the
# wheels gpu-bundle.sh unpacked ($TAPER_CUDA13_DIR), standing in for the lent machine's PyTorch.
# Usage: scripts/gpu-readiness.sh [BUNDLE]   (default gpu-bundle/)
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=$(cd "${1:-gpu-bundle}" && pwd)
cache=${TAPER_CUDA13_DIR:-$HOME/.cache/taper-cuda13}
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
cp -r "$bundle" "$empty/bundle"
# A PATH without the Rust toolchain: the system's directories only.
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if PATH=$path command -v cargo >/dev/null || PATH=$path command -v rustc >/dev/null; then
  echo "gpu-readiness: cargo or rustc is on the system PATH; cannot prove the bundle runs without them" >&2
  exit 1
fi
# PyTorch for step 5's reference where ../shared/bench/setup_torch.sh installed it (a lent
# machine's python3 has it); without it step 5 says so and skips the reference.
venv=${TORCH_VENV:-$HOME/.cache/taper-bench/torch-venv}
[ -x "$venv/bin/python3" ] && path=$venv/bin:$path
cd "$empty"
env -i HOME="$empty" PATH="$path" GPU_CHECK_DEVICE=cpu GPU_CHECK_LIBRARY_ROOTS="$cache/root" \
  bash bundle/scripts/gpu-check.sh --prebuilt bundle 2>&1 | tee "$empty/log"
tail -1 "$empty/log" | grep -q "^gpu_check=ok" || { echo "gpu-readiness: failed" >&2; exit 1; }
echo "gpu-readiness: ok"
