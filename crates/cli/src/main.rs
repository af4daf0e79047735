//! The `bootc` binary: set up the process and hand over to `bootc-lib`.

fn main() {
    bootc_utils::init_logging();
    bootc_utils::run_main(bootc_lib::cli::run_from_args(std::env::args_os()))
}
