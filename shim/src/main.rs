//! `berth`: the binary. Thin: parses the command line and hands off to
//! berth-core (and, once it lands, to the CRI server in berth-cri).

use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_core::{Config, Container, Process};

const USAGE: &str = "\
usage:
  berth --version
  berth run --rootfs DIR [--state DIR] [--id ID] [--hostname NAME] -- CMD [ARG...]
      run CMD in a new container (new mnt/uts/ipc/pid/net namespaces, the
      default capabilities, masked and read-only paths, loopback up) and
      exit with its status";

fn main() {
    // The sealed copy of this binary is also every container's init.
    berth_core::init::run_if_requested();
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> anyhow::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "version") => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Some("run") => run(&args[1..]),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(0)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<i32> {
    let mut rootfs = None;
    let mut state = PathBuf::from("/run/berth/run");
    let mut id = format!("run-{}", std::process::id());
    let mut hostname = None;
    let mut it = args.iter();
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--rootfs" => rootfs = Some(PathBuf::from(value("--rootfs")?)),
            "--state" => state = PathBuf::from(value("--state")?),
            "--id" => id = value("--id")?,
            "--hostname" => hostname = Some(value("--hostname")?),
            "--" => {
                command = it.cloned().collect();
                break;
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let Some(rootfs) = rootfs else {
        bail!("--rootfs is required\n{USAGE}")
    };
    if command.is_empty() {
        bail!("no command given\n{USAGE}");
    }
    let rootfs =
        std::fs::canonicalize(&rootfs).with_context(|| format!("rootfs {}", rootfs.display()))?;
    let mut config = Config::new(rootfs);
    config.hostname = hostname;
    let mut container = Container::create(&state, &id, config).context("create the container")?;
    let result = container
        .run(Process::new(command).inherit_stdio())
        .context("start the container")
        .and_then(|h| h.wait().context("wait for the container"));
    container.destroy().context("destroy the container")?;
    Ok(result?.code())
}
