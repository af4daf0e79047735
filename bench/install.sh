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

[[ $# == 0 ]] || {
    echo "usage: $0" >&2
    exit 2
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}
log() {
    printf '[%s] %s\n' "$(date +%T)" "$*" >&2
}

[[ $(id -u) == 0 ]] || die "run as root (loop devices, mounts, podman storage)"
for tool in podman losetup partx mkfs.ext4 grub-install /usr/bin/time awk; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install it)"
done

bench_src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$bench_src/.." && pwd)
runs=${BENCH_RUNS:-1}
size=${BENCH_SIZE:-8G}

bench_dir=${BENCH_DIR:-/var/tmp/bootc-bench-install}
bench_dir=${bench_dir%/}
if [[ -e $bench_dir ]] && [[ -n $(ls -A "$bench_dir") ]]; then
    die "$bench_dir is not empty: remove it first (and give ext4 discard a minute)"
fi
mkdir -p "$bench_dir"
S=$(cd "$bench_dir" && pwd)
mkdir -p "$S/res" "$S/mnt"

image_mounted=
cleanup() {
    local rc=$?
    # Anything a failed run left mounted or attached under $S.
    if mountpoint -q "$S/mnt"; then umount "$S/mnt" || true; fi
    local f l
    for f in "$S"/*.raw; do
        [[ -e $f ]] || continue
        for l in $(losetup -l -n -O NAME -j "$f"); do
            partx -d "$l" 2>/dev/null || true
            losetup -d "$l" 2>/dev/null || true
        done
    done
    if [[ -n $image_mounted ]]; then
        podman image unmount "$image_mounted" >/dev/null || true
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "keeping $S"
    else
        log "removing $S"
        rm -rf "$S"
    fi
    exit "$rc"
}
trap cleanup EXIT

# --- Image -----------------------------------------------------------------------

src_image=${BENCH_IMAGE:-$(podman images --format '{{.Repository}}:{{.Tag}} {{.CreatedAt}}' |
    awk '$1 ~ /^localhost\/bootc-bench:.*-v1$/ { print }' | sort -k2 -r | head -n1 | cut -d' ' -f1)}
[[ -n $src_image ]] || die "no localhost/bootc-bench:*-v1 image: run bench/pull.sh --build-only first"
podman image exists "$src_image" || die "$src_image not found"
src_id=$(podman image inspect --format '{{.Id}}' "$src_image" | cut -c1-12)
image=localhost/bootc-bench-inst:$src_id-v1

if ! podman image exists "$image"; then
    log "deriving $image from $src_image"
    mkdir -p "$S/ctx"
    cat >"$S/ctx/Containerfile" <<EOF
FROM $src_image
# bootc takes the kernel and initramfs from /usr/lib/modules/<kver>/.
RUN set -eu; \\
    kver=\$(ls /usr/lib/modules); \\
    test "\$(echo "\$kver" | wc -l)" -eq 1; \\
    mv "/boot/vmlinuz-\$kver" "/usr/lib/modules/\$kver/vmlinuz"; \\
    mv "/boot/initrd.img-\$kver" "/usr/lib/modules/\$kver/initramfs.img"; \\
    rm -f /boot/System.map-* /boot/config-*
EOF
    podman build --isolation=chroot -q -f "$S/ctx/Containerfile" -t "$image" "$S/ctx" >/dev/null
fi

# --- bootc binary (copied: others may rebuild target/ during the run) -------------

if [[ -n ${BOOTC_BIN:-} ]]; then
    bootc_src=$BOOTC_BIN
else
    (cd "$workspace" && cargo build --release -p bootc)
    bootc_src=${CARGO_TARGET_DIR:-$workspace/target}/release/bootc
fi
[[ -x $bootc_src ]] || die "bootc binary not found: $bootc_src"
BOOTC=$S/bootc
cp "$bootc_src" "$BOOTC"
bootc_rev=$(git -C "$workspace" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -z ${BOOTC_BIN:-} ]] && ! git -C "$workspace" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then
    bootc_rev+=" + uncommitted changes"
fi

# --- The rootfs of the baseline, and facts about it ---------------------------------

rootfs=$(podman image mount "$image")
image_mounted=$image
image_files=$(find "$rootfs" -xdev -type f | wc -l)
image_mb=$(du -sxm "$rootfs" | cut -f1)
# Read the tree once (untimed) so that both runs start with the same warm
# page cache: the merged tree and containers-storage share the layer files.
log "warming the page cache ($image_mb MB, $image_files files)"
tar -C "$rootfs" -cf - . | cat >/dev/null

# --- Timing helpers --------------------------------------------------------------

# timed NAME CMD...: sync (untimed), then run CMD under /usr/bin/time -v with
# stdout in $S/res/NAME.out and stderr (colours stripped), each line prefixed with the seconds
# since the start, in $S/res/NAME.err; records wall seconds and load.
timed() {
    local name=$1
    shift
    sync
    cut -d' ' -f1-3 /proc/loadavg >"$S/res/$name.load0"
    local t0=$EPOCHREALTIME
    local t0us=${t0/./} rc=0 line us
    {
        /usr/bin/time -v -o "$S/res/$name.time" "$@" 2>&1 >"$S/res/$name.out" |
            sed -u 's/\x1b\[[0-9;]*m//g' |
            while IFS= read -r line; do
                us=$((${EPOCHREALTIME/./} - t0us))
                printf '%4d.%03d %s\n' $((us / 1000000)) $((us % 1000000 / 1000)) "$line"
            done >"$S/res/$name.err"
    } || rc=$?
    local t1=$EPOCHREALTIME
    cut -d' ' -f1-3 /proc/loadavg >"$S/res/$name.load1"
    if [[ $rc != 0 ]]; then
        cat "$S/res/$name.err" >&2
        die "$name failed: $*"
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' >"$S/res/$name.wall"
    log "$name: $(cat "$S/res/$name.wall") s (load before: $(cat "$S/res/$name.load0"))"
}
wall() { cat "$S/res/$1.wall"; }
tfield() { sed -n "s/^[[:space:]]*$2: //p" "$S/res/$1.time"; }
cpu_s() {
    awk -v u="$(tfield "$1" 'User time (seconds)')" -v s="$(tfield "$1" 'System time (seconds)')" \
        'BEGIN { printf "%.1f user + %.1f sys", u, s }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

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

# --- Timed runs -------------------------------------------------------------------

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
    loop=$(losetup -f --show "$1")
    partx -a "$loop" 2>/dev/null || true
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
    partx -d "$loop" 2>/dev/null || true
    losetup -d "$loop"
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

best() {
    local prefix=$1
    for i in $(seq "$runs"); do wall "$prefix-$i"; done | sort -n | head -n1
}
base_best=$(best baseline)
bootc_best=$(best bootc)

# --- Report ------------------------------------------------------------------------

cat <<EOF

bootc install benchmark (bench/install.sh), bootc $bootc_rev, $(date -u +'%Y-%m-%d %H:%M UTC')
machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)
image: $image (from $src_image): $image_mb MB, $image_files files
disks: fresh sparse files of $size each; runs: $runs

run                      wall s   cpu s                   load before -> after
EOF
for i in $(seq "$runs"); do
    for n in baseline bootc; do
        printf '%-22s  %7s   %-22s  %s -> %s\n' "$n-$i" "$(wall "$n-$i")" "$(cpu_s "$n-$i")" \
            "$(cat "$S/res/$n-$i.load0")" "$(cat "$S/res/$n-$i.load1")"
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
if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    echo "raw results: $S/res"
fi
