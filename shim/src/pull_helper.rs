//! `berth __berth_pull [--log-level L] [--log-format text|json]`: the pull
//! helper process (`berth_cri::image::helper`). The daemon starts one per
//! PullImage, with its own log settings; it is not a command for people.

use std::ffi::OsString;

use berth_cri::image::helper::{HelperCommand, PULL_ARG};

use crate::config::{Config, LogFormat};

/// Runs the helper (`args`: what follows [`PULL_ARG`]); returns the exit
/// code.
pub fn main(args: &[OsString]) -> i32 {
    let mut level = "info".to_string();
    let mut format = LogFormat::Text;
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--log-level", Some(v)) => level = v,
            ("--log-format", Some(v)) if v == "json" => format = LogFormat::Json,
            ("--log-format", Some(_)) => format = LogFormat::Text,
            _ => {
                eprintln!("berth {PULL_ARG}: unknown argument {flag:?}");
                return 2;
            }
        }
    }
    if let Err(e) = crate::serve::init_logging(&level, format) {
        eprintln!("berth {PULL_ARG}: {e:#}");
    }
    berth_cri::image::helper::serve()
}

/// How the daemon under `config` starts its pull helpers: its own binary —
/// the sealed copy it keeps as containers' init, else `/proc/self/exe`
/// (either is the binary running, even if the file was replaced since; the
/// copy can also be exec'd by a daemon under valgrind, which the symbol
/// order's profile needs) — with its log settings.
pub fn command(config: &Config) -> HelperCommand {
    use std::os::fd::AsRawFd;
    let format = match config.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    // The copy stays open for the daemon's life (runtime-core caches it).
    let exe = match berth_core::process::sealed_self() {
        Ok(fd) => format!("/proc/self/fd/{}", fd.as_raw_fd()).into(),
        Err(e) => {
            tracing::warn!(error = %e, "no sealed copy of berth; pull helpers exec /proc/self/exe");
            "/proc/self/exe".into()
        }
    };
    HelperCommand {
        exe,
        args: [
            PULL_ARG,
            "--log-level",
            &config.log_level,
            "--log-format",
            format,
        ]
        .into_iter()
        .map(OsString::from)
        .collect(),
    }
}
