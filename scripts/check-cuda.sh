#!/usr/bin/env bash
# Type-checks and lints taper's CUDA builds (`cargo clippy -D warnings` with `--features cuda`,
# and with `--features nccl` for GPU ranks: CUDA + MPI + NCCL; every target) on a machine without
# a GPU. When nvcc is missing it installs Debian's non-free `nvidia-cuda-toolkit` (nvcc 11.8; as
# root: adds `contrib non-free` to apt's sources first). candle-kernels' build script compiles
# its PTX with nvcc for compute capability $CUDA_COMPUTE_CAP (default 80: no GPU to ask). The
# target directory lives outside the checkout ($CUDA_TARGET_DIR, default
# ~/.cache/taper-cuda-target), so later checks are incremental. .ci/run calls this when nvcc is
# present. Usage: scripts/check-cuda.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || scripts/apt-nonfree.sh nvidia-cuda-toolkit
nvcc --version | tail -2
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$HOME/.cache/taper-cuda-target}
cargo clippy --release --features cuda --all-targets -- -D warnings
# A check links nothing: it needs Open MPI's headers but no NCCL library (a build links libnccl).
cargo clippy --release --features nccl --all-targets -- -D warnings
echo "cuda_check=ok"
