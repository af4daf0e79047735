#!/bin/bash
# Pull benchmark (issue #2, "Benchmark"): how fast `bootc image pull` brings a
# realistic ~1 GB multi-layer OS image into an empty store, compared with the
# transport alone (skopeo copy), podman pull and the gunzip floor; then how an
# update that changes one small layer is pulled on top.
#
# Usage: bench/pull.sh [--build-only]   (as root; see BENCHMARKS.md)
#   --build-only  only build (or find cached) the images, time nothing
#
# Environment:
#   BENCH_DIR     scratch directory (default /var/tmp/bootc-bench); must not
#                 exist or be empty; removed at the end unless BENCH_KEEP=1
#   BENCH_KEEP=1  keep BENCH_DIR (registry, layouts, stores, raw timings)
#                 (a run needs ~5 GB there, and its removal takes minutes)
#   BOOTC_BIN     the bootc binary to measure (default: run
#                 `cargo build --release -p bootc` and use target/release/bootc)
#   BENCH_MIRROR  Debian mirror for the image (default: from the host's apt sources)
#   BENCH_SECURITY_MIRROR  same for bookworm-security (default: from the host)
#
# The images are cached in podman's default storage, keyed by the recipe:
# localhost/bootc-bench-base:KEY (mmdebstrap), localhost/bootc-bench-os:KEY
# (Containerfile.os), localhost/bootc-bench:KEY-v1 and KEY-v2
# (Containerfile.app). An existing tag is not rebuilt.
#
# Nothing is deleted between timed runs (on ext4 with discard, a run right
# after deleting a large tree is 30-40% slower); each timed run writes to a
# fresh directory, and `sync` (untimed) runs before each one.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_only=0
case ${1:-} in
"") ;;
--build-only) build_only=1 ;;
*) bench_usage "[--build-only]" ;;
esac

readonly SCRIPT_VERSION=1
readonly SUITE=bookworm
readonly REPO=bootc-bench

bench_init pull.sh "podman storage, mounts" \
    podman skopeo docker-registry mmdebstrap jq gzip python3 /usr/bin/time
bench_scratch /var/tmp/bootc-bench

# --- Image (cached in podman storage) ----------------------------------------

# First URI of the host's apt sources for suite $1 (deb822 or one-line).
host_mirror() {
    local suite=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^[ \t]*#/) continue
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = " " $i " " }
                }
                if (index(suites, " " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done | head -n1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
    done | head -n1
}
mirror=${BENCH_MIRROR:-$(host_mirror "$SUITE" | head -n1)}
security_mirror=${BENCH_SECURITY_MIRROR:-$(host_mirror "$SUITE-security" | head -n1)}
[[ -n $mirror ]] || die "no apt source for $SUITE on the host; set BENCH_MIRROR"
sources="Types: deb
URIs: ${mirror%/}
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
if [[ -n $security_mirror ]]; then
    sources+="

Types: deb
URIs: ${security_mirror%/}
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
fi

key=$({
    echo "script=$SCRIPT_VERSION suite=$SUITE"
    echo "$sources"
    cat "$bench_src/Containerfile.os" "$bench_src/Containerfile.app"
} | sha256sum | cut -c1-12)
base_image=localhost/bootc-bench-base:$key
os_image=localhost/bootc-bench-os:$key
app_image=localhost/bootc-bench:$key

if ! podman image exists "$base_image"; then
    log "building $base_image with mmdebstrap"
    mkdir -p "$S/build"
    printf '%s\n' "$sources" >"$S/build/debian.sources"
    mmdebstrap --variant=minbase --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='APT::Install-Recommends "false"' \
        "$SUITE" "$S/build/rootfs.tar" "$S/build/debian.sources"
    podman import \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --message "bootc bench base: mmdebstrap minbase $SUITE" \
        "$S/build/rootfs.tar" "$base_image"
    rm -f "$S/build/rootfs.tar"
fi
mkdir -p "$S/ctx"
if ! podman image exists "$os_image"; then
    log "building $os_image"
    podman build --isolation=chroot --layers -f "$bench_src/Containerfile.os" \
        --build-arg "BASE_IMAGE=$base_image" -t "$os_image" "$S/ctx"
fi
for v in 1 2; do
    if ! podman image exists "$app_image-v$v"; then
        log "building $app_image-v$v"
        podman build --isolation=chroot --layers -f "$bench_src/Containerfile.app" \
            --build-arg "OS_IMAGE=$os_image" --build-arg "APP_VERSION=$v" \
            -t "$app_image-v$v" "$S/ctx"
    fi
done
if [[ $build_only == 1 ]]; then
    log "images ready: $app_image-v1, $app_image-v2"
    exit 0
fi

bench_bootc

# --- Registry ------------------------------------------------------------------

bench_registry_start
ref=$REG/$REPO:latest

log "pushing $app_image-v1 to $ref"
podman push -q --tls-verify=false "$app_image-v1" "docker://$ref"
manifest1=$(skopeo inspect --raw --tls-verify=false "docker://$ref")

# --- Timing helpers (timed, wall, cpu_s, ... in lib.sh) -------------------------

# Blob digests fetched (GET answered 200) from our repository during run NAME.
blob_gets() {
    local from to
    from=$(cat "$S/res/$1.log0")
    to=$(cat "$S/res/$1.log1")
    sed -n "$((from + 1)),${to}p" "$REG_ACCESS_LOG" |
        grep -o "\"GET /v2/$REPO/blobs/sha256:[0-9a-f]* HTTP/[0-9.]*\" 200" |
        sed -E 's/.*blobs\/(sha256:[0-9a-f]+) .*/\1/' | sort || true
}
# bootc image pull under `timed`, with the peak RSS of the bootc process
# itself sampled from /proc (time -v reports the largest of bootc and skopeo).
bootc_pull() {
    local name=$1
    shift
    (
        # Sample VmHWM of the bootc process while it runs.
        while :; do
            pid=$(pgrep -n -f "^$BOOTC image pull" || true)
            if [[ -n $pid ]]; then
                while hwm=$(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null) && [[ -n $hwm ]]; do
                    echo "$hwm" >"$S/res/$name.hwm"
                    sleep 0.2
                done
                break
            fi
            sleep 0.05
        done
    ) &
    local sampler=$!
    timed "$name" "$BOOTC" image pull --quiet --format json "$@"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
}
jfield() { jq -r ".$2" "$S/res/$1.out"; }

# --- Full pulls --------------------------------------------------------------------

log "timed runs (full image)"
timed skopeo skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$S/oci:v1"

timed podman podman --root "$S/podman/root" --runroot "$S/podman/run" \
    pull -q --tls-verify=false "$ref"

# The layer blobs of the layout, for the decompression floor.
layout_manifest=$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "v1") | .digest' "$S/oci/index.json")
jq -r '.layers[].digest' "$S/oci/blobs/sha256/${layout_manifest#sha256:}" |
    sed "s|^sha256:|$S/oci/blobs/sha256/|" >"$S/res/layer-blobs"
timed gunzip sh -c 'xargs -P2 -n1 sh -c '\''gzip -dc "$1" >/dev/null'\'' _ <"$1"' _ "$S/res/layer-blobs"
# The same with zlib's inflate (the library bootc's decompressor uses),
# through Python's zlib module; for information.
timed zlib sh -c 'xargs -P2 -n1 python3 -c "$1" <"$2"' _ '
import sys, zlib
d = zlib.decompressobj(31)
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        d.decompress(chunk)
' "$S/res/layer-blobs"

bootc_pull bootc-registry --sysroot "$S/bootc-registry" "docker://$ref"
bootc_pull bootc-oci --sysroot "$S/bootc-oci" "oci:$S/oci:v1"

# --- Update -----------------------------------------------------------------------

log "pushing $app_image-v2 to $ref"
podman push -q --tls-verify=false "$app_image-v2" "docker://$ref"
manifest2=$(skopeo inspect --raw --tls-verify=false "docker://$ref")
config2=$(jq -r .config.digest <<<"$manifest2")
# What an exact update fetches: the layers new in v2, and v2's config.
{
    echo "$config2"
    comm -13 <(jq -r '.layers[].digest' <<<"$manifest1" | sort) \
        <(jq -r '.layers[].digest' <<<"$manifest2" | sort)
} | sort >"$S/res/update-expected"
changed_layer_bytes=$(jq -r --slurpfile old <(jq '[.layers[].digest]' <<<"$manifest1") \
    '[.layers[] | select(.digest as $d | $old[0] | index($d) | not) | .size] | add' <<<"$manifest2")

log "timed runs (update)"
bootc_pull bootc-update --sysroot "$S/bootc-registry" "docker://$ref"
timed podman-update podman --root "$S/podman/root" --runroot "$S/podman/run" \
    pull -q --tls-verify=false "$ref"

# --- Facts about the image (untimed) ----------------------------------------------

# Files whose content is new in v2's app layer, from its MANIFEST (the
# generator changes exactly the files listed with a release other than 1).
mnt=$(podman image mount "$app_image-v2")
app_files=$(wc -l <"$mnt/opt/app/MANIFEST")
app_changed=$(awk '$2 != 1' "$mnt/opt/app/MANIFEST" | wc -l)
podman image unmount "$app_image-v2" >/dev/null
mnt=$(podman image mount "$app_image-v1")
image_files=$(find "$mnt" -xdev -type f | wc -l)
podman image unmount "$app_image-v1" >/dev/null
image_bytes=$(podman image inspect --format '{{.Size}}' "$app_image-v1")
layer_bytes=$(jq '[.layers[].size] | add' <<<"$manifest1")
nlayers=$(jq '.layers | length' <<<"$manifest1")
store_mb() { du -sm "$1" | cut -f1; }

# --- Report ------------------------------------------------------------------------

mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }
gets_full=$(blob_gets bootc-registry | wc -l)
blob_gets bootc-update >"$S/res/update-got"
gets_update=$(wc -l <"$S/res/update-got")
podman_gets_update=$(blob_gets podman-update | wc -l)
if cmp -s "$S/res/update-expected" "$S/res/update-got"; then
    update_exact="yes"
else
    update_exact="NO (expected: $(tr '\n' ' ' <"$S/res/update-expected"); got: $(tr '\n' ' ' <"$S/res/update-got"))"
fi
gunzip_rate=$(awk -v b="$layer_bytes" -v t="$(wall gunzip)" 'BEGIN { printf "%.0f", b / 1e6 / t }')

cat <<EOF

== bootc pull benchmark ($(date -u +%FT%TZ), $(nproc) cores) ==
bootc: $bootc_rev
image: $app_image-v1 -> $ref
  $nlayers layers, $(mb "$layer_bytes") MB compressed, $(mb "$image_bytes") MB uncompressed, $image_files regular files
  layer blobs (MB, gzip): $(jq -r '[.layers[].size / 1e6 | floor | tostring] | join(" ")' <<<"$manifest1")
update: $app_image-v2, one layer changed ($(mb "$changed_layer_bytes") MB compressed; $app_changed of its $app_files files new)

run                       wall s   cpu s                  max RSS MB   load before
skopeo copy -> oci:       $(printf '%7s' "$(wall skopeo)")   $(printf '%-22s' "$(cpu_s skopeo)") $(printf '%6s' "$(maxrss_mb skopeo)")       $(load_before skopeo)
podman pull               $(printf '%7s' "$(wall podman)")   $(printf '%-22s' "$(cpu_s podman)") $(printf '%6s' "$(maxrss_mb podman)")       $(load_before podman)
gunzip floor (2 at once)  $(printf '%7s' "$(wall gunzip)")   $(printf '%-22s' "$(cpu_s gunzip)") $(printf '%6s' "$(maxrss_mb gunzip)")       $(load_before gunzip)
zlib inflate (2 at once)  $(printf '%7s' "$(wall zlib)")   $(printf '%-22s' "$(cpu_s zlib)") $(printf '%6s' "$(maxrss_mb zlib)")       $(load_before zlib)
bootc pull (registry)     $(printf '%7s' "$(wall bootc-registry)")   $(printf '%-22s' "$(cpu_s bootc-registry)") $(printf '%6s' "$(maxrss_mb bootc-registry)")       $(load_before bootc-registry)
bootc pull (oci: layout)  $(printf '%7s' "$(wall bootc-oci)")   $(printf '%-22s' "$(cpu_s bootc-oci)") $(printf '%6s' "$(maxrss_mb bootc-oci)")       $(load_before bootc-oci)
bootc update (registry)   $(printf '%7s' "$(wall bootc-update)")   $(printf '%-22s' "$(cpu_s bootc-update)") $(printf '%6s' "$(maxrss_mb bootc-update)")       $(load_before bootc-update)
podman update             $(printf '%7s' "$(wall podman-update)")   $(printf '%-22s' "$(cpu_s podman-update)") $(printf '%6s' "$(maxrss_mb podman-update)")       $(load_before podman-update)
(cpu s include children, e.g. bootc's skopeo proxy; max RSS is the largest single process)

gunzip floor: $gunzip_rate MB/s of compressed input over 2 workers (the largest layer bounds it)
bootc full pull from registry: path $(jfield bootc-registry path), $(jfield bootc-registry layers) layers, $(jfield bootc-registry objectsNew) objects new ($(mb "$(jfield bootc-registry bytesNew)") MB), $gets_full blob GETs
bootc full pull from oci:     path $(jfield bootc-oci path), $(jfield bootc-oci objectsNew) objects new ($(mb "$(jfield bootc-oci bytesNew)") MB)
bootc update: $(jfield bootc-update layersAlreadyPresent) of $(jfield bootc-update layers) layers already present, $(jfield bootc-update objectsNew) objects new ($(jfield bootc-update bytesNew) bytes), $gets_update blob GETs (podman: $podman_gets_update)
bootc update fetched exactly the changed layer + config: $update_exact
bootc peak RSS (bootc process itself, VmHWM): full $(awk '{ printf "%.0f", $1 / 1024 }' "$S/res/bootc-registry.hwm" 2>/dev/null || echo '?') MB, oci $(awk '{ printf "%.0f", $1 / 1024 }' "$S/res/bootc-oci.hwm" 2>/dev/null || echo '?') MB, update $(awk '{ printf "%.0f", $1 / 1024 }' "$S/res/bootc-update.hwm" 2>/dev/null || echo '?') MB
stores on disk: bootc $(store_mb "$S/bootc-registry/composefs") MB (after update), podman $(store_mb "$S/podman/root") MB (after update), oci layout $(store_mb "$S/oci") MB

ratio                                   value   target
bootc / podman pull                     $(printf '%5s' "$(ratio "$(wall bootc-registry)" "$(wall podman)")")   <= 0.25
bootc / gunzip floor                    $(printf '%5s' "$(ratio "$(wall bootc-registry)" "$(wall gunzip)")")   <= 1.5
bootc oci: / gunzip floor               $(printf '%5s' "$(ratio "$(wall bootc-oci)" "$(wall gunzip)")")   (info)
bootc / zlib inflate floor              $(printf '%5s' "$(ratio "$(wall bootc-registry)" "$(wall zlib)")")   (info)
bootc / skopeo copy                     $(printf '%5s' "$(ratio "$(wall bootc-registry)" "$(wall skopeo)")")   (info)
bootc update / podman update            $(printf '%5s' "$(ratio "$(wall bootc-update)" "$(wall podman-update)")")   <= 0.25

The same by CPU time (user + sys, children included; less sensitive to
other load on the machine than wall time, but blind to parallelism):
bootc / podman pull, CPU                $(printf '%5s' "$(ratio "$(cpu_total bootc-registry)" "$(cpu_total podman)")")
bootc / gunzip floor, CPU               $(printf '%5s' "$(ratio "$(cpu_total bootc-registry)" "$(cpu_total gunzip)")")
bootc update / podman update, CPU       $(printf '%5s' "$(ratio "$(cpu_total bootc-update)" "$(cpu_total podman-update)")")
EOF

bench_finish
