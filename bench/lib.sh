# Shared parts of the benchmark scripts (sourced by bench/*.sh, never run):
# messages, the scratch directory and its cleanup trap, the bootc binary under
# test, a local registry stopped by pid, loop devices, timed runs and their
# figures, and the installable image the install and lifecycle benchmarks
# derive from the image of bench/pull.sh.
#
# A script sources this file and calls bench_init, then bench_scratch; every
# function below that names no directory works under $S, set by
# bench_scratch.

# --- Messages and checks -------------------------------------------------------

die() {
    echo "${BENCH_NAME:-bench}: $*" >&2
    exit 1
}
log() {
    printf '[%s] %s\n' "$(date +%T)" "$*" >&2
}

# bench_init NAME WHY TOOL...: name the script in messages; die unless run
# as root (WHY says what for) and unless every TOOL is installed.
bench_init() {
    BENCH_NAME=$1
    [[ $(id -u) == 0 ]] || die "run as root ($2)"
    shift 2
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is missing (apt-get install it)"
    done
}

# bench_usage [ARGS]: print the usage line and exit 2.
bench_usage() {
    echo "usage: $0${1:+ $1}" >&2
    exit 2
}

bench_src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$bench_src/.." && pwd)

# --- Scratch directory and cleanup ---------------------------------------------

# Images mounted with `podman image mount` (bench_image_mount).
bench_image_mounts=()
reg_pid=
bench_created_dir=0

# bench_scratch DEFAULT: the scratch directory $S (BENCH_DIR, else DEFAULT),
# which must not exist or be empty, with $S/res for raw results; installs the
# cleanup trap.
bench_scratch() {
    local dir=${BENCH_DIR:-$1}
    dir=${dir%/}
    if [[ -e $dir ]] && [[ -n $(ls -A "$dir") ]]; then
        die "$dir is not empty: remove it first (and give ext4 discard a minute)"
    fi
    [[ -e $dir ]] || bench_created_dir=1
    mkdir -p "$dir"
    S=$(cd "$dir" && pwd)
    [[ $S != / ]] || die "BENCH_DIR must not be /"
    mkdir -p "$S/res"
    trap bench_cleanup EXIT
}

# At exit: the registry, mounts under $S (deepest first), loop devices over
# files under $S, mounted images; then $S itself unless BENCH_KEEP=1 (only
# its content if it existed before).
bench_cleanup() {
    local rc=$? m l
    bench_registry_stop
    if [[ -n ${S:-} ]]; then
        for m in $(findmnt -rn -o TARGET | grep -F "$S/" | sort -r); do
            umount "$m" || true
        done
        for l in $(losetup -l -n -O NAME,BACK-FILE | awk -v s="$S/" 'index($2, s) == 1 { print $1 }'); do
            bench_loop_detach "$l"
        done
    fi
    for m in "${bench_image_mounts[@]}"; do
        podman image unmount "$m" >/dev/null || true
    done
    if [[ -n ${S:-} ]]; then
        if [[ ${BENCH_KEEP:-0} == 1 ]]; then
            log "keeping $S"
        else
            log "removing $S (takes a while: ext4 discard)"
            if [[ $bench_created_dir == 1 ]]; then
                rm -rf "$S"
            else
                find "$S" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
            fi
        fi
    fi
    exit "$rc"
}

# bench_image_mount IMAGE: `podman image mount` it at $image_root
# (unmounted at exit unless bench_image_unmount ran).
bench_image_mount() {
    bench_image_mounts+=("$1")
    image_root=$(podman image mount "$1")
}

# bench_image_unmount IMAGE
bench_image_unmount() {
    podman image unmount "$1" >/dev/null
    local kept=() m
    for m in "${bench_image_mounts[@]}"; do
        [[ $m == "$1" ]] || kept+=("$m")
    done
    bench_image_mounts=("${kept[@]}")
}

# --- Loop devices ----------------------------------------------------------------

# bench_loop_attach FILE: a loop device over FILE with its partitions
# (partx; the kernel does not scan them itself); prints the device.
bench_loop_attach() {
    local l
    l=$(losetup -f --show "$1")
    partx -a "$l" 2>/dev/null || true
    echo "$l"
}

# bench_loop_detach DEV: remove its partitions and detach it.
bench_loop_detach() {
    partx -d "$1" 2>/dev/null || true
    losetup -d "$1" 2>/dev/null || true
}

# --- The bootc binary --------------------------------------------------------------

# bench_bootc: $BOOTC, a copy in $S of BOOTC_BIN or of a fresh
# `cargo build --release -p bootc` (others may rebuild target/ during a
# run), and $bootc_rev, what it was built from.
bench_bootc() {
    local src
    if [[ -n ${BOOTC_BIN:-} ]]; then
        src=$BOOTC_BIN
    else
        (cd "$workspace" && cargo build --release -p bootc)
        src=${CARGO_TARGET_DIR:-$workspace/target}/release/bootc
    fi
    [[ -x $src ]] || die "bootc binary not found: $src"
    BOOTC=$S/bootc
    cp "$src" "$BOOTC"
    if [[ -n ${BOOTC_BIN:-} ]]; then
        bootc_rev="$BOOTC_BIN, sha256 $(sha256sum "$BOOTC" | cut -c1-12)"
    else
        bootc_rev=$(git -C "$workspace" rev-parse --short HEAD 2>/dev/null || echo unknown)
        if ! git -C "$workspace" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then
            bootc_rev+=" + uncommitted changes"
        fi
    fi
}

# --- Registry ------------------------------------------------------------------------

# bench_registry_start: a docker-registry on 127.0.0.1 and a free port,
# storage in $S/registry; sets REG (host:port), REG_ACCESS_LOG, reg_pid, and
# CONTAINERS_REGISTRIES_CONF marking it plain HTTP. Stopped at exit.
bench_registry_start() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    REG=127.0.0.1:$port
    mkdir -p "$S/registry"
    cat >"$S/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $S/registry/data
  delete:
    enabled: true
http:
  addr: $REG
EOF
    REG_ACCESS_LOG=$S/registry/access.log
    # The access log goes to stdout, everything else to stderr.
    docker-registry serve "$S/registry/config.yml" \
        >"$REG_ACCESS_LOG" 2>"$S/registry/registry.log" </dev/null &
    reg_pid=$!
    local _
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "registry did not start on $REG"
    cat >"$S/registries.conf" <<EOF
[[registry]]
location = "$REG"
insecure = true
EOF
    export CONTAINERS_REGISTRIES_CONF=$S/registries.conf
}

# bench_registry_stop: kill the registry by its pid, if started.
bench_registry_stop() {
    if [[ -n $reg_pid ]]; then
        kill "$reg_pid" 2>/dev/null || true
        wait "$reg_pid" 2>/dev/null || true
        reg_pid=
    fi
}

# --- Timed runs ------------------------------------------------------------------------

# timed NAME CMD...: sync (untimed), then run CMD under /usr/bin/time -v,
# stdout in $S/res/NAME.out, stderr (colours stripped, each line prefixed
# with the seconds since the start) in $S/res/NAME.err; records the wall
# seconds (NAME.wall), the load average before and after (NAME.load0/1)
# and, with a registry running, its access log position (NAME.log0/1).
timed() {
    local name=$1
    shift
    sync
    cut -d' ' -f1-3 /proc/loadavg >"$S/res/$name.load0"
    if [[ -n $reg_pid ]]; then wc -l <"$REG_ACCESS_LOG" >"$S/res/$name.log0"; fi
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
    if [[ -n $reg_pid ]]; then
        sleep 0.5 # let the registry flush its access log
        wc -l <"$REG_ACCESS_LOG" >"$S/res/$name.log1"
    fi
    cut -d' ' -f1-3 /proc/loadavg >"$S/res/$name.load1"
    if [[ $rc != 0 ]]; then
        cat "$S/res/$name.err" >&2
        die "$name failed: $*"
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }' >"$S/res/$name.wall"
    log "$name: $(cat "$S/res/$name.wall") s (load before: $(cat "$S/res/$name.load0"))"
}

# Figures of a timed run NAME.
wall() { cat "$S/res/$1.wall"; }
load_before() { cat "$S/res/$1.load0"; }
load_after() { cat "$S/res/$1.load1"; }
# A field of /usr/bin/time -v's report.
tfield() { sed -n "s/^[[:space:]]*$2: //p" "$S/res/$1.time"; }
maxrss_mb() { awk '{ printf "%.0f", $1 / 1024 }' <<<"$(tfield "$1" 'Maximum resident set size (kbytes)')"; }
# "U user + S sys" CPU seconds (children included).
cpu_s() {
    awk -v u="$(tfield "$1" 'User time (seconds)')" -v s="$(tfield "$1" 'System time (seconds)')" \
        'BEGIN { printf "%.1f user + %.1f sys", u, s }'
}
# User + system CPU seconds (children included).
cpu_total() {
    awk -v u="$(tfield "$1" 'User time (seconds)')" -v s="$(tfield "$1" 'System time (seconds)')" \
        'BEGIN { printf "%.2f", u + s }'
}
# best PREFIX RUNS: the smallest wall time of PREFIX-1 .. PREFIX-RUNS.
best() {
    local i
    for i in $(seq "$2"); do wall "$1-$i"; done | sort -n | head -n1
}

# ratio A B [DIGITS]: A / B with DIGITS decimals (default 2).
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { printf "%.*f", d, a / b }'; }

# The machine a report was taken on.
bench_machine() {
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
}

# --- The installable image ------------------------------------------------------------

# bench_inst_image: $src_image, the image of bench/pull.sh (BENCH_IMAGE, else
# the newest localhost/bootc-bench:*-v1), $src_id, and $inst_image,
# localhost/bootc-bench-inst:<id>-v1 derived from it (cached) with the
# kernel and initramfs moved from /boot (where Debian installs them) to
# /usr/lib/modules/<kver>/, where bootc takes them.
bench_inst_image() {
    src_image=${BENCH_IMAGE:-$(podman images --format '{{.Repository}}:{{.Tag}} {{.CreatedAt}}' |
        awk '$1 ~ /^localhost\/bootc-bench:.*-v1$/ { print }' | sort -k2 -r | head -n1 | cut -d' ' -f1)}
    [[ -n $src_image ]] || die "no localhost/bootc-bench:*-v1 image: run bench/pull.sh --build-only first"
    podman image exists "$src_image" || die "$src_image not found"
    src_id=$(podman image inspect --format '{{.Id}}' "$src_image" | cut -c1-12)
    inst_image=localhost/bootc-bench-inst:$src_id-v1
    podman image exists "$inst_image" && return
    log "deriving $inst_image from $src_image"
    mkdir -p "$S/ctx"
    cat >"$S/ctx/Containerfile.inst" <<EOF
FROM $src_image
# bootc takes the kernel and initramfs from /usr/lib/modules/<kver>/.
RUN set -eu; \\
    kver=\$(ls /usr/lib/modules); \\
    test "\$(echo "\$kver" | wc -l)" -eq 1; \\
    mv "/boot/vmlinuz-\$kver" "/usr/lib/modules/\$kver/vmlinuz"; \\
    mv "/boot/initrd.img-\$kver" "/usr/lib/modules/\$kver/initramfs.img"; \\
    rm -f /boot/System.map-* /boot/config-*
EOF
    podman build --isolation=chroot -q -f "$S/ctx/Containerfile.inst" -t "$inst_image" "$S/ctx" >/dev/null
}

# bench_finish: the closing line of a report.
bench_finish() {
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "raw results: $S/res"
    fi
}
