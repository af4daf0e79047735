#!/bin/bash
# dracut module "bootc": mount the bootc deployment named by composefs=<ID> on
# the kernel command line as the new root (bootc-initramfs-setup.service).
#
# Install this directory as /usr/lib/dracut/modules.d/50bootc and the binary
# as /usr/lib/bootc/bootc-initramfs-setup (or /usr/bin/bootc-initramfs-setup);
# the module is then included in every initramfs dracut builds.

# The binary, wherever the image installed it.
bootc_setup_binary() {
    local b
    for b in /usr/lib/bootc/bootc-initramfs-setup /usr/bin/bootc-initramfs-setup; do
        if [[ -x ${dracutsysrootdir-}$b ]]; then
            echo "$b"
            return 0
        fi
    done
    return 1
}

check() {
    bootc_setup_binary > /dev/null || return 1
    require_binaries modprobe || return 1
    return 0
}

depends() {
    # The unit runs in a systemd initramfs.
    echo systemd
    return 0
}

installkernel() {
    # The composefs root: EROFS image, overlayfs on top, and a loop device
    # for kernels whose EROFS cannot mount a file directly.
    hostonly='' instmods erofs overlay loop
}

install() {
    local bin
    bin=$(bootc_setup_binary) || return 1
    inst_binary "$bin" /usr/bin/bootc-initramfs-setup
    inst_multiple modprobe
    inst_simple "$moddir/bootc-initramfs-setup.service" \
        "$systemdsystemunitdir/bootc-initramfs-setup.service"
    $SYSTEMCTL -q --root "$initdir" enable bootc-initramfs-setup.service
}
