//! `bootc-initramfs-setup`: mount the chosen deployment as the new root in the initramfs.

fn main() {
    bootc_utils::run_main(Err(anyhow::anyhow!("not implemented yet")))
}
