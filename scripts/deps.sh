#!/bin/bash
# Install what bootc's build, tests, demo and benchmarks need on Debian 12.
# Idempotent: apt runs only when a package is missing.
set -euo pipefail
PACKAGES=(
  skopeo podman docker-registry erofs-utils mmdebstrap
  qemu-system-x86 qemu-utils ovmf seabios udev grub2-common grub-pc-bin grub-efi-amd64-bin
  mtools dosfstools fdisk gdisk e2fsprogs xfsprogs btrfs-progs util-linux
  jq python3 python3-jsonschema binutils time busybox-static
  git procps hyperfine gnupg
  python3-nacl python3-cryptography openssl
  debhelper lintian fakeroot
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "Installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo (Rust toolchain) not found in PATH" >&2; exit 1; }
