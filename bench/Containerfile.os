# The OS part of the benchmark image (see bench/pull.sh): a Debian bookworm
# system with a kernel, an init system and common packages, one RUN per
# package group so that the image has several realistic layers.
# Built FROM an mmdebstrap minbase rootfs imported with `podman import`.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive

# Layer: init system and kernel (with its initramfs-tools initramfs).
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        systemd systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

# Layer: scripting languages.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        python3 python3-venv python3-yaml python3-requests perl libperl5.36; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

# Layer: C/C++ toolchain.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        gcc g++ make libc6-dev binutils pkg-config; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

# Layer: administration tools.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        openssh-server openssh-client curl ca-certificates git vim less \
        iproute2 iputils-ping procps sudo rsync lsof strace e2fsprogs xfsprogs \
        cpio zstd xz-utils bzip2 file tzdata; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

LABEL containers.bootc=1
