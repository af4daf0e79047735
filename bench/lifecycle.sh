#!/bin/bash
# Lifecycle benchmark (issue #4, "Benchmark"): on a disk installed with the
# realistic ~1.2 GB Debian image of bench/pull.sh, make three deployments of
# images that differ by ~5% of their files, then measure
#   (a) the latency of `bootc status --format json` (target <= 20 ms), and
#   (b) the disk used by three deployments against one (target <= 1.1x).
#
# Usage: bench/lifecycle.sh   (as root; see BENCHMARKS.md)
#
# Environment:
#   BENCH_DIR    scratch directory (default /var/tmp/bootc-bench-lifecycle);
#                must not exist or be empty; removed at the end unless
#                BENCH_KEEP=1
#   BENCH_KEEP=1 keep BENCH_DIR (the disk file, raw timings)
#   BENCH_SIZE   size of the sparse disk file (default 8G)
#   BENCH_STATUS_RUNS  timed `status` runs (default 50)
#   BOOTC_BIN    the bootc binary (default: `cargo build --release -p bootc`)
#   BENCH_IMAGE  the image of bench/pull.sh to start from (default: the
#                newest localhost/bootc-bench:*-v1 in podman storage; build
#                it with `bench/pull.sh --build-only` if there is none)
#
# Images (cached in podman storage, keyed by the source image and recipe):
#   localhost/bootc-bench-inst:<id>-v1  the source image with its kernel and
#     initramfs moved from /boot to /usr/lib/modules/<kver>/ (as
#     bench/install.sh derives it)
#   localhost/bootc-bench-inst:<id>-<key>-v2, -v3  FROM v1, one RUN that
#     appends a line to N files under /usr/share, N = 5% of v1's regular
#     files; v2 takes every STEP-th file of the sorted list from the first,
#     v3 from the second, so each differs from v1 in its own 5% of the files.
#
# Deployments: install v1 (untimed; GRUB), `bootc pin` it, then
# `bootc switch --sysroot` to v2 and to v3. Offline there is no booted
# deployment, so pruning keeps only the default and rollback entries; the pin
# is what keeps v1 as the third deployment. The script checks that three
# deployment directories remain.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $# == 0 ]] || bench_usage
bench_init lifecycle.sh "loop devices, mounts, podman storage" \
    podman losetup partx grub-install jq awk /usr/bin/time
bench_scratch /var/tmp/bootc-bench-lifecycle
MNT=$S/mnt
disk=$S/disk.raw
mkdir -p "$MNT" "$S/ctx"
size=${BENCH_SIZE:-8G}
status_runs=${BENCH_STATUS_RUNS:-50}

# --- Images -----------------------------------------------------------------------

bench_inst_image
v1=$inst_image

# How many files v2 and v3 change: 5% of v1's regular files, spread over the
# sorted list of /usr/share's regular files.
bench_image_mount "$v1"
v1_files=$(find "$image_root" -xdev -type f | wc -l)
share_files=$(find "$image_root/usr/share" -xdev -type f | wc -l)
bench_image_unmount "$v1"
nchange=$((v1_files / 20))
step=$((share_files / nchange))
((step >= 2)) || die "/usr/share has too few files ($share_files) for two disjoint sets of $nchange"

cat >"$S/ctx/Containerfile.vN" <<'EOF'
ARG V1
FROM ${V1}
ARG VERSION
ARG OFFSET
ARG STEP
ARG COUNT
RUN set -eu; \
    find /usr/share -xdev -type f | LC_ALL=C sort \
        | awk -v s="$STEP" -v o="$OFFSET" 'NR % s == o' | head -n "$COUNT" > /tmp/changed; \
    while IFS= read -r f; do printf 'bench v%s\n' "$VERSION" >> "$f"; done < /tmp/changed; \
    echo "changed $(wc -l < /tmp/changed) files"; \
    rm -f /tmp/changed
LABEL org.opencontainers.image.version=bench-v${VERSION}
EOF
recipe_key=$({
    echo "nchange=$nchange step=$step"
    cat "$S/ctx/Containerfile.vN"
} | sha256sum | cut -c1-8)
declare -A img=([1]=$v1)
for v in 2 3; do
    img[$v]=localhost/bootc-bench-inst:$src_id-$recipe_key-v$v
    if ! podman image exists "${img[$v]}"; then
        log "building ${img[$v]} ($nchange files changed)"
        podman build --isolation=chroot -q -f "$S/ctx/Containerfile.vN" \
            --build-arg "V1=$v1" --build-arg "VERSION=$v" --build-arg "OFFSET=$((v - 2))" \
            --build-arg "STEP=$step" --build-arg "COUNT=$nchange" \
            -t "${img[$v]}" "$S/ctx" >/dev/null
    fi
done

bench_bootc

# --- Install v1, mount the root partition -------------------------------------------

truncate -s "$size" "$disk"
log "installing $v1"
"$BOOTC" install to-disk --via-loopback --bootloader grub \
    --source-imgref "containers-storage:$v1" "$disk" >"$S/res/install.out"
loopdev=$(bench_loop_attach "$disk")
mount "${loopdev}p3" "$MNT"

deployments() { find "$MNT/state/deploy" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n'; }

# usage NAME: disk used by the root filesystem's content (du, hard links
# counted once) and its parts, and df's used, in KiB.
usage() {
    local name=$1
    sync
    du -sxk "$MNT" | cut -f1 >"$S/res/$name.du"
    local part
    for part in composefs state boot; do
        du -sxk "$MNT/$part" | cut -f1 >"$S/res/$name.du-$part"
    done
    df -k --output=used "$MNT" | tail -n1 | tr -d ' ' >"$S/res/$name.df"
}
usage one
[[ $(deployments | wc -l) == 1 ]] || die "expected one deployment after install"
d1=$(deployments)
"$BOOTC" pin --sysroot "$MNT" "$d1" >/dev/null

for v in 2 3; do
    timed "switch-v$v" "$BOOTC" switch --quiet --sysroot "$MNT" "containers-storage:${img[$v]}"
done
ndeploy=$(deployments | wc -l)
[[ $ndeploy == 3 ]] || die "expected three deployments after two switches, found $ndeploy: $(deployments | tr '\n' ' ')"
usage three
# The kernel and initramfs copies under boot/bootc/<deployment>/: how many
# are identical, and the KiB that the duplicates take.
declare -A seen=()
kernel_dirs=0 kernel_unique=0 kernel_dup_kb=0
for d in "$MNT"/boot/bootc/*/; do
    kernel_dirs=$((kernel_dirs + 1))
    h=$(cd "$d" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    kb=$(du -sxk "$d" | cut -f1)
    if [[ -n ${seen[$h]:-} ]]; then
        kernel_dup_kb=$((kernel_dup_kb + kb))
    else
        seen[$h]=1
        kernel_unique=$((kernel_unique + 1))
        kernel_dir_kb=$kb
    fi
done
echo $(($(cat "$S/res/three.du") - kernel_dup_kb)) >"$S/res/three-dedup.du"

# --- status latency ------------------------------------------------------------------

status_cmd=("$BOOTC" status --sysroot "$MNT" --format json)
"${status_cmd[@]}" >"$S/res/status.json"
roles=$(jq -r '[
    (.status.staged // empty | "staged=" + .image.image.image),
    (.status.booted // empty | "booted=" + .image.image.image),
    (.status.rollback // empty | "rollback=" + .image.image.image),
    (.status.otherDeployments // [] | .[] | "other=" + .image.image.image + (if .pinned then " (pinned)" else "" end))
] | join(", ")' "$S/res/status.json")
log "status: $roles"

load_status=$(cut -d' ' -f1-3 /proc/loadavg)
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 5 --runs "$status_runs" --export-json "$S/res/status-hyperfine.json" \
        "${status_cmd[*]}" >"$S/res/status-hyperfine.out" 2>&1 || {
        cat "$S/res/status-hyperfine.out" >&2
        die "hyperfine failed"
    }
    jq -r '.results[0].times[]' "$S/res/status-hyperfine.json" |
        awk '{ printf "%.3f\n", $1 * 1000 }' >"$S/res/status-ms"
    status_tool="hyperfine -N --warmup 5 --runs $status_runs"
else
    for _ in 1 2 3 4 5; do "${status_cmd[@]}" >/dev/null; done
    for _ in $(seq "$status_runs"); do
        t0=$(date +%s%N)
        "${status_cmd[@]}" >/dev/null
        t1=$(date +%s%N)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e6 }'
    done >"$S/res/status-ms"
    status_tool="a loop of $status_runs runs timed with date +%s%N (5 warm-up runs)"
fi
sort -n "$S/res/status-ms" >"$S/res/status-ms.sorted"
stat_ms() {
    awk -v what="$1" '{ v[NR] = $1; t += $1 }
        END {
            if (what == "mean") printf "%.1f", t / NR
            if (what == "median") printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (what == "min") printf "%.1f", v[1]
            if (what == "max") printf "%.1f", v[NR]
            if (what == "p90") { i = int(NR * 0.9 + 0.999); printf "%.1f", v[i] }
        }' "$S/res/status-ms.sorted"
}
# One more run, for its user/system split.
/usr/bin/time -f '%U s user, %S s sys, %M KB max RSS' -o "$S/res/status.time" \
    "${status_cmd[@]}" >/dev/null

# --- Facts (untimed) ---------------------------------------------------------------

mb() { awk -v k="$(cat "$S/res/$1")" 'BEGIN { printf "%.0f", k / 1024 }'; }
# ratio_of FILE1 FILE2: the ratio of two figures of $S/res, 3 decimals.
ratio_of() { ratio "$(cat "$S/res/$1")" "$(cat "$S/res/$2")" 3; }
# Bytes of the files v2 changed (their v1 sizes), for scale.
bench_image_mount "$v1"
changed_mb=$(cd "$image_root" && find usr/share -xdev -type f | LC_ALL=C sort |
    awk -v s="$step" -v o=0 'NR % s == o' | head -n "$nchange" |
    tr '\n' '\0' | du -ck --files0-from=- 2>/dev/null | tail -n1 | cut -f1 |
    awk '{ printf "%.1f", $1 / 1024 }')
v1_mb=$(du -sxm "$image_root" | cut -f1)
bench_image_unmount "$v1"

umount "$MNT"
bench_loop_detach "$loopdev"

# --- Report ------------------------------------------------------------------------

cat <<EOF

bootc lifecycle benchmark (bench/lifecycle.sh), bootc $bootc_rev, $(date -u +'%Y-%m-%d %H:%M UTC')
$(bench_machine)
images: v1 $v1 ($v1_mb MB, $v1_files files)
        v2, v3 ${img[2]%-v2}-v{2,3}: each appends a line to its own $nchange files
        under /usr/share (5% of v1's files; ~$changed_mb MB of v1 content)
disk: sparse $size file, installed with --bootloader grub; v1 pinned, then
      switch --sysroot to v2 ($(wall switch-v2) s) and to v3 ($(wall switch-v3) s)
deployments left: $ndeploy ($roles)

status --format json --sysroot, $status_tool, load $load_status:
  mean $(stat_ms mean) ms, median $(stat_ms median) ms, min $(stat_ms min) ms, p90 $(stat_ms p90) ms, max $(stat_ms max) ms
  one run: $(cat "$S/res/status.time")

disk used (MB)              one deployment   three deployments   ratio
root fs content (du -sx)    $(printf '%14s' "$(mb one.du)")   $(printf '%17s' "$(mb three.du)")   $(ratio_of three.du one.du)
  store (composefs/)        $(printf '%14s' "$(mb one.du-composefs)")   $(printf '%17s' "$(mb three.du-composefs)")
  boot/ (kernels, grub)     $(printf '%14s' "$(mb one.du-boot)")   $(printf '%17s' "$(mb three.du-boot)")
  state/ (/etc, /var, ...)  $(printf '%14s' "$(mb one.du-state)")   $(printf '%17s' "$(mb three.du-state)")
root fs used (df)           $(printf '%14s' "$(mb one.df)")   $(printf '%17s' "$(mb three.df)")   $(ratio_of three.df one.df)
kernel+initramfs copies in boot/bootc/: $kernel_dirs, $kernel_unique distinct ($((kernel_dir_kb / 1024)) MB each);
  without the $((kernel_dirs - kernel_unique)) duplicate(s) the three deployments would take $(mb three-dedup.du) MB, ratio $(ratio_of three-dedup.du one.du)

ratio / figure                      value    target
status --format json, median        $(printf '%5s' "$(stat_ms median)") ms  <= 20 ms
disk, three / one deployment (du)   $(printf '%5s' "$(ratio_of three.du one.du)")     <= 1.1
EOF
bench_finish
