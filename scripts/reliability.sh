#!/bin/bash
# Crash and power-loss tests of bootc (RELIABILITY.md), as root on Debian 12.
#
#   scripts/reliability.sh fast   the layers also in the README test command:
#                                 SIGKILL at every crash point (ESP, offline
#                                 lifecycle), a sample of flush states on ext4
#                                 (powercut_ext4_sampled), disk full and EIO (diskfull_*)
#   scripts/reliability.sh long   every recorded flush state on ext4 and xfs (systemd-boot)
#                                 and ext4 with GRUB (powercut_all_flushes_*)
#                                 45 min to 2 h on 2 cores; BOOTC_POWERCUT_STRIDE=K for every K-th flush
#   scripts/reliability.sh all    both (default)
#
# Each test prints its figures (points crashed, flush and reordered states
# checked, disk-full cases); they are collected at the end, from the log
# in $BOOTC_RELIABILITY_LOG (default /var/tmp/bootc-reliability.log).
# BOOTC_POWERCUT_SEED=N picks other random write subsets (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
log=${BOOTC_RELIABILITY_LOG:-/var/tmp/bootc-reliability.log}
[[ $(id -u) == 0 ]] || { echo "error: run as root (loop devices, mounts, FUSE)" >&2; exit 1; }
bash scripts/deps.sh
podman image exists localhost/bootc-example:latest || bash examples/build.sh
: >"$log"
failed=0
# Run a test command, log it, go on after a failure (counted for the exit status).
t() { echo "+ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log" || { failed=$((failed + 1)); echo "FAILED: $*" | tee -a "$log"; }; }
cargo build --release -p bootc
if [[ $tier == fast || $tier == all ]]; then
  t cargo test --release -p bootc-boot --test esp_crash -- --nocapture
  t cargo test --release -p bootc-lib --test offline_crash -- --nocapture
  t cargo test --release -p bootc-logreplay
  t cargo test --release -p bootc-tests-integration -- --test-threads=1 --nocapture powercut_ext4_sampled diskfull_pull_and_stage
  # EIO: ignored in the README test command while a known bug makes it fail (RELIABILITY.md).
  t cargo test --release -p bootc-tests-integration -- --test-threads=1 --nocapture --ignored diskfull_eio
fi
if [[ $tier == long || $tier == all ]]; then
  t cargo test --release -p bootc-tests-integration -- --test-threads=1 --nocapture --ignored powercut_all_flushes
fi
echo "== figures"
grep -E '^(crash test|powercut .*(checked|failed)|diskfull:|crashed at|FAILED:)' "$log" | sed 's/^/  /' || true
grep -E '^test result|tests?: .* passed' "$log" | sed 's/^/  /' || true
echo "== $failed test commands failed"
exit $((failed > 0))
