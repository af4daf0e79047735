//! Boot entries: BLS type-1 files, grub.cfg, systemd-boot on the ESP.
