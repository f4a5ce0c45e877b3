//! A binary whose only job is to be a container init (used by the
//! integration tests, whose libtest `main` cannot be re-executed as one).

fn main() {
    berth_core::init::run_if_requested();
    eprintln!(
        "berth-core-init: only runs as a container init ({})",
        berth_core::init::INIT_ARG
    );
    std::process::exit(2);
}
