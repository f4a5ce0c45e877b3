//! The per-container monitor as a stand-alone binary, for the integration
//! tests (`env!("CARGO_BIN_EXE_berth-cri-monitor")`): a libtest `main` cannot
//! be re-executed as a monitor or a container init. The daemon's own binary
//! makes the same two calls first in its `main`.

fn main() {
    berth_core::init::run_if_requested();
    berth_cri::monitor::run_from_args();
    eprintln!(
        "berth-cri-monitor: only runs as `{} <dir>/monitor.json` (see berth_cri::monitor::spawn)",
        berth_cri::monitor::MONITOR_ARG
    );
    std::process::exit(2);
}
