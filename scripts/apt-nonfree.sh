#!/usr/bin/env bash
# Installs Debian packages from the non-free components (NVIDIA's: nvidia-cuda-toolkit,
# libcuda1), enabling `contrib non-free non-free-firmware` in apt's sources first (as root).
# Usage: scripts/apt-nonfree.sh PACKAGE...
set -euo pipefail
sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$sources" ]; then
  sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "$sources"
else
  sed -i 's/ main$/ main contrib non-free non-free-firmware/' /etc/apt/sources.list
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
