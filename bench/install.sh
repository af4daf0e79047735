#!/bin/bash
# Install benchmark (issue #3, "Benchmark"): how long `bootc install to-disk`
# takes for the realistic ~1.2 GB Debian image of bench/pull.sh, against the
# floor of writing the same tree to a disk the plain way: mkfs.ext4 on a loop
# file, mount, `cp -a` of the image's rootfs, sync, umount. Target: bootc at
# most 1.5x the baseline.
#
# Usage: bench/install.sh   (as root; see BENCHMARKS.md)
#
# Environment:
#   BENCH_DIR    scratch directory (default /var/tmp/bootc-bench-install);
#                must not exist or be empty; removed at the end unless
#                BENCH_KEEP=1
#   BENCH_KEEP=1 keep BENCH_DIR (disk files, raw timings, debug logs)
#   BENCH_RUNS   timed runs of each (default 1); they alternate baseline,
#                bootc, baseline, bootc, ... and the minimum is reported
#   BENCH_SIZE   size of each sparse disk file (default 8G)
#   BOOTC_BIN    the bootc binary (default: `cargo build --release -p bootc`)
#   BENCH_IMAGE  the image of bench/pull.sh to start from (default: the
#                newest localhost/bootc-bench:*-v1 in podman storage; build
#                it with `bench/pull.sh --build-only` if there is none)
#
# The image of bench/pull.sh keeps its kernel and initramfs in /boot (as
# Debian installs them); bootc wants them in /usr/lib/modules/<kver>/, so
# this script derives localhost/bootc-bench-inst:<id>-v1 from it with one
# RUN that moves them there (vmlinuz, initramfs.img). Both runs use that
# image: the baseline copies its `podman image mount` tree, bootc installs
# it from containers-storage.
#
# Nothing is deleted between timed runs (on ext4 with discard, a run right
# after deleting a large tree is 30-40% slower): each run writes a fresh
# sparse file; `sync` (untimed) runs before each.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# == 0 ]] || bench_usage
bench_init install.sh "loop devices, mounts, podman storage" \
    podman losetup partx mkfs.ext4 grub-install /usr/bin/time awk
bench_scratch /var/tmp/bootc-bench-install
mkdir -p "$S/mnt"
runs=${BENCH_RUNS:-1}
size=${BENCH_SIZE:-8G}

# --- Image -----------------------------------------------------------------------

bench_inst_image
image=$inst_image

bench_bootc

# --- The rootfs of the baseline, and facts about it ---------------------------------

bench_image_mount "$image"
rootfs=$image_root
image_files=$(find "$rootfs" -xdev -type f | wc -l)
image_mb=$(du -sxm "$rootfs" | cut -f1)
# Read the tree once (untimed) so that both runs start with the same warm
# page cache: the merged tree and containers-storage share the layer files.
log "warming the page cache ($image_mb MB, $image_files files)"
tar -C "$rootfs" -cf - . | cat >/dev/null

# --- Timed runs (timed, wall, cpu_s, ... in lib.sh) ---------------------------------

# The baseline, as one script so that /usr/bin/time covers all of it.
baseline_script='
set -eu
disk=$1 mnt=$2 rootfs=$3
loop=$(losetup -f --show "$disk")
mkfs.ext4 -q "$loop"
mount "$loop" "$mnt"
cp -a "$rootfs/." "$mnt/"
sync
umount "$mnt"
losetup -d "$loop"
'

for i in $(seq "$runs"); do
    truncate -s "$size" "$S/base-$i.raw"
    timed "baseline-$i" sh -c "$baseline_script" sh "$S/base-$i.raw" "$S/mnt" "$rootfs"

    truncate -s "$size" "$S/bootc-$i.raw"
    timed "bootc-$i" env RUST_LOG=debug "$BOOTC" install to-disk --via-loopback \
        --bootloader grub --source-imgref "containers-storage:$image" "$S/bootc-$i.raw"
done

# --- What was written (untimed) ----------------------------------------------------

# Used space of the baseline's filesystem and of bootc's root partition.
fs_used_mb() {
    local loop
    loop=$(bench_loop_attach "$1")
    local dev=$loop
    [[ -e ${loop}p3 ]] && dev=${loop}p3
    mount -o ro "$dev" "$S/mnt"
    local used
    used=$(df -m --output=used "$S/mnt" | tail -n1 | tr -d ' ')
    if [[ -d $S/mnt/composefs ]]; then
        echo "$used MB (store $(du -sxm "$S/mnt/composefs" | cut -f1) MB, boot $(du -sxm "$S/mnt/boot" | cut -f1) MB, state $(du -sxm "$S/mnt/state" | cut -f1) MB)"
    else
        echo "$used MB"
    fi
    umount "$S/mnt"
    bench_loop_detach "$loop"
}
base_used=$(fs_used_mb "$S/base-1.raw")
bootc_used=$(fs_used_mb "$S/bootc-1.raw")

# Phases of the first bootc run, from the timestamped debug log: the first
# line that names each step.
phase() {
    awk -v pat="$1" 'index($0, pat) { print $1; exit }' "$S/res/bootc-1.err"
}
phases=""
for p in sfdisk mkfs.vfat mkfs.ext4 "pulling " grub-install fstrim; do
    t=$(phase "$p")
    [[ -n $t ]] && phases+="  $(printf '%8s' "$t") s  first line with \"$p\"
"
done

base_best=$(best baseline "$runs")
bootc_best=$(best bootc "$runs")

# --- Report ------------------------------------------------------------------------

cat <<EOF

bootc install benchmark (bench/install.sh), bootc $bootc_rev, $(date -u +'%Y-%m-%d %H:%M UTC')
$(bench_machine)
image: $image (from $src_image): $image_mb MB, $image_files files
disks: fresh sparse files of $size each; runs: $runs

run                      wall s   cpu s                   load before -> after
EOF
for i in $(seq "$runs"); do
    for n in baseline bootc; do
        printf '%-22s  %7s   %-22s  %s -> %s\n' "$n-$i" "$(wall "$n-$i")" "$(cpu_s "$n-$i")" \
            "$(load_before "$n-$i")" "$(load_after "$n-$i")"
    done
done
cat <<EOF
(baseline: losetup + mkfs.ext4 + mount + cp -a + sync + umount;
 bootc: install to-disk --via-loopback --bootloader grub --source-imgref containers-storage:...)

used space: baseline fs $base_used; bootc root fs $bootc_used

bootc-1 phases (seconds since start):
$phases  $(printf '%8s' "$(wall bootc-1)") s  end

ratio                          value   target
bootc / baseline (best)        $(printf '%5s' "$(ratio "$bootc_best" "$base_best")")   <= 1.5
EOF
bench_finish
