#!/bin/bash
# Build the example bootable container image (Debian bookworm, 6.12 backports
# kernel, our bootc binary and initramfs root setup) into podman's default
# storage as localhost/bootc-example:TAG.
#
# Usage: examples/build.sh TAG [extra podman build args...]
#
# Environment:
#   BOOTC_BIN     use this bootc binary instead of running
#                 `cargo build --release -p bootc` in the workspace
#   BOOTC_INITRAMFS_SETUP_BIN  same for bootc-initramfs-setup (package
#                 bootc-initramfs); both are built in one cargo run when
#                 neither is given
#   BOOTC_KEEP_DEBUG=1  copy the binaries with their debug info (default: the
#                 image gets copies stripped with `strip --strip-debug`)
#   DEBIAN_MIRROR override the Debian mirror URL (default: taken from the
#                 host's apt sources)
#   DEBIAN_SECURITY_MIRROR  same for the security archive (default: from the
#                 host's apt sources; omitted if the host has none)
set -euo pipefail

# Bump when the way the base rootfs is produced changes: it is part of the
# base image cache key.
readonly SCRIPT_VERSION=1
readonly SUITE=bookworm
# Packages added to mmdebstrap's minbase variant for the base rootfs.
# Everything else is installed by the Containerfile.
readonly BASE_PACKAGES=""

die() {
    echo "build.sh: $*" >&2
    exit 1
}

[[ $# -ge 1 ]] || die "usage: $0 TAG [extra podman build args...]"
tag=$1
shift
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid image tag: $tag"

# One build.sh at a time (tests may call it concurrently); this does not
# guard against unrelated podman builds.
exec 9>/var/tmp/bootc-example-build.lock
flock 9

examples_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$examples_dir/.." && pwd)

# --- Debian mirror, from the host's apt configuration -----------------------

# Print the first URI of the host apt sources serving suite $1 (exact match).
host_mirror_for_suite() {
    local suite=$1 f
    local -a deb822=() oneline=()
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && deb822+=("$f")
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] && oneline+=("$f")
    done
    local found=""
    if [[ ${#deb822[@]} -gt 0 ]]; then
        # deb822 paragraphs are separated by blank lines.
        found=$(awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    split(line, kv, ":")
                    key = tolower(kv[1])
                    val = substr(line, index(line, ":") + 1)
                    gsub(/^[ \t]+|[ \t]+$/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++) if (s[j] == suite) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "${deb822[@]}")
    fi
    if [[ -z $found && ${#oneline[@]} -gt 0 ]]; then
        # deb [options] URI SUITE COMPONENTS...
        found=$(sed -E 's/\[[^]]*\]//' "${oneline[@]}" |
            awk -v suite="$suite" '$1 == "deb" && $3 == suite && !done { print $2; done = 1 }')
    fi
    printf '%s' "$found"
}

mirror=${DEBIAN_MIRROR:-$(host_mirror_for_suite "$SUITE")}
security_mirror=${DEBIAN_SECURITY_MIRROR:-$(host_mirror_for_suite "$SUITE-security")}
[[ -n $mirror ]] || die "no apt source for suite $SUITE found in /etc/apt; set DEBIAN_MIRROR"
mirror=${mirror%/}
security_mirror=${security_mirror%/}

# The image's apt sources: the release, its updates and backports (for the
# 6.12 kernel) from the host's mirror, plus security if the host has it.
sources=$(
    cat <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates $SUITE-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    if [[ -n $security_mirror ]]; then
        cat <<EOF

Types: deb
URIs: $security_mirror
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
)

# --- Base rootfs (mmdebstrap, cached by tag in podman storage) ---------------

dpkg_opts=(
    'path-exclude=/usr/share/doc/*'
    'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/man/*'
    'path-exclude=/usr/share/info/*'
    'path-exclude=/usr/share/locale/*'
    'path-include=/usr/share/locale/locale.alias'
    'path-exclude=/usr/share/lintian/*'
)
apt_opts=(
    'APT::Install-Recommends "false"'
    'APT::Install-Suggests "false"'
    'Acquire::Languages "none"'
)

base_key=$(
    {
        echo "script=$SCRIPT_VERSION suite=$SUITE variant=minbase hooks=merged-usr"
        echo "packages=$BASE_PACKAGES"
        printf 'dpkg=%s\n' "${dpkg_opts[@]}"
        printf 'apt=%s\n' "${apt_opts[@]}"
        echo "$sources"
    } | sha256sum | cut -c1-16
)
base_image=localhost/bootc-example-base:$base_key

if podman image exists "$base_image"; then
    echo "build.sh: reusing base image $base_image"
else
    echo "build.sh: creating base image $base_image with mmdebstrap"
    tmp=$(mktemp -d /var/tmp/bootc-example-base.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    printf '%s\n' "$sources" >"$tmp/debian.sources"
    # The merged-usr hook makes the /bin -> usr/bin etc. symlinks itself;
    # otherwise bookworm pulls in the usrmerge package and with it perl.
    mm_args=(--variant=minbase --format=tar
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
    for o in "${dpkg_opts[@]}"; do mm_args+=("--dpkgopt=$o"); done
    for o in "${apt_opts[@]}"; do mm_args+=("--aptopt=$o"); done
    if [[ -n $BASE_PACKAGES ]]; then
        mm_args+=("--include=$BASE_PACKAGES")
    fi
    mmdebstrap "${mm_args[@]}" "$SUITE" "$tmp/rootfs.tar" "$tmp/debian.sources"
    podman import \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --message "bootc example base: mmdebstrap minbase $SUITE" \
        "$tmp/rootfs.tar" "$base_image"
    rm -rf "$tmp"
    trap - EXIT
fi

# --- bootc binaries ----------------------------------------------------------

cargo_packages=()
[[ -n ${BOOTC_BIN:-} ]] || cargo_packages+=(-p bootc)
[[ -n ${BOOTC_INITRAMFS_SETUP_BIN:-} ]] || cargo_packages+=(-p bootc-initramfs)
if [[ ${#cargo_packages[@]} -gt 0 ]]; then
    (cd "$workspace" && cargo build --release "${cargo_packages[@]}")
fi
release_dir=${CARGO_TARGET_DIR:-$workspace/target}/release
bootc_bin=${BOOTC_BIN:-$release_dir/bootc}
setup_bin=${BOOTC_INITRAMFS_SETUP_BIN:-$release_dir/bootc-initramfs-setup}
[[ -x $bootc_bin ]] || die "bootc binary not found or not executable: $bootc_bin"
[[ -x $setup_bin ]] || die "bootc-initramfs-setup binary not found or not executable: $setup_bin"

# --- Image -------------------------------------------------------------------

# A small build context holding only the binaries and the dracut module: the
# workspace (with its multi-GB target/) must not be the context.
ctx=$(mktemp -d /var/tmp/bootc-example-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$bootc_bin" "$ctx/bootc"
cp "$setup_bin" "$ctx/bootc-initramfs-setup"
# The release profile keeps line tables (~70 MB); the image gets the binaries
# without debug sections (symbols kept) unless BOOTC_KEEP_DEBUG=1.
if [[ ${BOOTC_KEEP_DEBUG:-0} != 1 ]]; then
    strip --strip-debug "$ctx/bootc" "$ctx/bootc-initramfs-setup"
fi
cp -r "$workspace/contrib/dracut/50bootc" "$ctx/dracut-50bootc"
# Normalised modes and times, so that podman's layer cache reuses the COPY
# steps (and the initramfs built after them) when the content is unchanged.
chmod 0755 "$ctx/dracut-50bootc" "$ctx/dracut-50bootc/module-setup.sh"
chmod 0644 "$ctx/dracut-50bootc/bootc-initramfs-setup.service"
# systemd units of contrib/systemd (bootc-finalize-staged.service), if any.
mkdir "$ctx/systemd-units"
for unit in "$workspace"/contrib/systemd/*.service "$workspace"/contrib/systemd/*.path \
    "$workspace"/contrib/systemd/*.timer; do
    [[ -f $unit ]] || continue
    cp "$unit" "$ctx/systemd-units/"
    chmod 0644 "$ctx/systemd-units/$(basename "$unit")"
done
chmod 0755 "$ctx/systemd-units"
find "$ctx" -exec touch -h -d @0 {} +

podman build \
    --isolation=chroot \
    --layers \
    -f "$examples_dir/Containerfile" \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "VERSION=$tag" \
    -t "localhost/bootc-example:$tag" \
    "$@" \
    "$ctx"

echo "build.sh: built localhost/bootc-example:$tag"
