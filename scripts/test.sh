#!/bin/bash
# Run every test: unit tests, then root integration tests (local registry,
# podman-built images, the example bootable image). Prints one closing line
# "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export CARGO_TERM_COLOR=never
cargo build --release -p bootc -p bootc-initramfs
# The example bootable image and its two variants, reused by the integration
# and VM tests (cached: only changed layers are rebuilt).
export BOOTC_BIN="$PWD/target/release/bootc"
export BOOTC_INITRAMFS_SETUP_BIN="$PWD/target/release/bootc-initramfs-setup"
examples/build.sh latest
examples/build.sh v1
examples/build.sh v2 --build-arg VARIANT=v2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
