#!/bin/bash
# Build the Debian package target/debian/bootc_<version>_amd64.deb with
# debhelper (debian/): cargo builds the binaries, bootc itself writes the
# shell completions, docs/man has the man pages; dpkg-buildpackage lays them
# out in Debian paths, strips them and computes the shared-library
# dependencies. Then lintian checks the package (errors fail the build).
#
# Environment:
#   BOOTC_DEB_VERSION  package version (default: the workspace version)
#   BOOTC_BIN, BOOTC_INITRAMFS_SETUP_BIN  use these binaries instead of
#                      `cargo build --release -p bootc -p bootc-initramfs`
#   BOOTC_NO_LINTIAN=1 skip lintian
#   BOOTC_DEB_OUTDIR   where the .deb goes (default: target/debian)
set -euo pipefail

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$workspace"

die() {
    echo "package.sh: $*" >&2
    exit 1
}

crate_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
version=${BOOTC_DEB_VERSION:-$crate_version}
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "invalid version: $version"

if [[ -z ${BOOTC_BIN:-} || -z ${BOOTC_INITRAMFS_SETUP_BIN:-} ]]; then
    cargo build --release -p bootc -p bootc-initramfs
fi
release_dir=${CARGO_TARGET_DIR:-$workspace/target}/release
bootc_bin=${BOOTC_BIN:-$release_dir/bootc}
setup_bin=${BOOTC_INITRAMFS_SETUP_BIN:-$release_dir/bootc-initramfs-setup}
[[ -x $bootc_bin && -x $setup_bin ]] || die "binaries missing: $bootc_bin $setup_bin"

out=${BOOTC_DEB_OUTDIR:-$workspace/target/debian}
build=$out/build/bootc-$version
rm -rf "$out/build"
mkdir -p "$build"
# The source tree dpkg-buildpackage sees: only what the package installs.
cp -r debian contrib "$build/"
mkdir -p "$build/docs"
cp -r docs/man "$build/docs/man"
stage=$build/debian/stage
mkdir -p "$stage/completions"
cp "$bootc_bin" "$stage/bootc"
cp "$setup_bin" "$stage/bootc-initramfs-setup"
"$bootc_bin" completion bash > "$stage/completions/bootc"
"$bootc_bin" completion zsh > "$stage/completions/_bootc"
"$bootc_bin" completion fish > "$stage/completions/bootc.fish"

# The changelog carries the version (a native package: no Debian revision).
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cat > "$build/debian/changelog" <<CHANGELOG
bootc ($version) unstable; urgency=medium

  * Built from the bootc Rust workspace by scripts/package.sh.

 -- bootc Rust developers <bootc-rs@localhost.invalid>  $date
CHANGELOG

(cd "$build" && dpkg-buildpackage -b -uc -us -d --no-check-builddeps)
deb=$out/bootc_${version}_amd64.deb
mv "$out/build/bootc_${version}_amd64.deb" "$deb"
rm -rf "$out/build"
echo "package.sh: built $deb"

if [[ ${BOOTC_NO_LINTIAN:-0} != 1 ]]; then
    # --fail-on error: warnings are explained in README.md (Packaging).
    lintian --fail-on error --info "$deb"
fi
