#!/usr/bin/env bash
# Makes what a lent GPU machine runs (no Rust, no network, 64 MiB a call): a `--features cuda`
# taper built here against CUDA 13.0 from PyPI's wheels (the lent machines' driver 580 takes
# CUDA 13.0 PTX; nvcc 13.0 is the newest it JIT-compiles), PTX for compute capability
# $CUDA_COMPUTE_CAP (default 80: the driver JIT-compiles it for 9.0 on H100/H200, once, into
# ~/.nv/ComputeCache), for a portable x86-64-v3 CPU (AVX2 + FMA), stripped, and beside it what
# scripts/gpu-check.sh --prebuilt needs: the script, the configs, the shipped data, MiniLM
# (f16, half the bytes; taper loads it as f32) and the PyTorch reference step.
# The binary links libcuda.so.1 (the driver's) and libcublas.so.13 (with libcublasLt.so.13),
# libcurand.so.10, libcudart.so.13 (CUDA 13's sonames: PyTorch's cu13 wheels carry them;
# gpu-check.sh finds them and prints where; needs.txt lists them). The binary and MiniLM's
# weights travel xz-compressed (the lent machine unpacks them with python's lzma).
# Usage: scripts/gpu-bundle.sh [OUT]   (OUT: default gpu-bundle/, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-bundle}
cache=${TAPER_CUDA13_DIR:-$HOME/.cache/taper-cuda13}
cuda=$cache/root/nvidia/cu13
wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)

# 1. CUDA 13.0 from PyPI, unpacked once into $cache (about 1.2 GB).
if [ ! -x "$cuda/bin/nvcc" ]; then
  mkdir -p "$cache/wheels" "$cache/root"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --dest "$cache/wheels" "${wheels[@]}"
  for wheel in "$cache"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$cache/root"; done
  chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/*
fi
# The linker asks for unversioned names; the wheels ship the sonames only. The links go beside
# them: cudarc's build passes that directory with -L, ahead of the system's, where Debian's
# CUDA 11.8 libcudart.so may also be.
for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "lib$lib" "$cuda/lib/lib${lib%.so.*}.so"
done
# libcuda.so comes with the driver, which no wheel carries: Debian's libcuda1 stands in to link.
libcuda=/usr/lib/x86_64-linux-gnu/nvidia/current
[ -e "$libcuda/libcuda.so" ] || scripts/apt-nonfree.sh libcuda1

# 2. The binary.
export PATH=$cuda/bin:$PATH CUDA_HOME=$cuda CUDA_ROOT=$cuda CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$libcuda${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CUDA13_TARGET_DIR:-$HOME/.cache/taper-cuda13-target}
export RUSTFLAGS="-C target-cpu=x86-64-v3"
taper=$(scripts/taper-bin.sh --features cuda --quiet)

# 3. The bundle.
rm -rf "$out" && mkdir -p "$out/scripts" "$out/data" "$out/models"
strip -o "$out/taper" "$taper"
xz -T0 -6 "$out/taper"
cp scripts/gpu-check.sh scripts/gpu-reference.py "$out/scripts/"
cp -r configs "$out/configs"
cp -r data/shakespeare.txt data/sentiment "$out/data/"
scripts/fetch-minilm.sh >/dev/null
python3 scripts/gpu-bundle-minilm.py .cache/models/all-MiniLM-L6-v2 "$out/models/all-MiniLM-L6-v2"
xz -T0 -6 "$out/models/all-MiniLM-L6-v2/model.safetensors"
readelf -d "$taper" | awk '/NEEDED/ {gsub(/[\[\]]/, "", $5); print $5}' > "$out/needs.txt"
git describe --always --dirty > "$out/commit.txt"
echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $out (taper $(cat "$out/commit.txt")," \
  "compute capability $CUDA_COMPUTE_CAP); the binary needs: $(tr '\n' ' ' < "$out/needs.txt")"
