//! `bootc install`: partitions, filesystems, the first deployment and its bootloader.
