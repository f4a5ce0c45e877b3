//! `berth`: the binary. Thin: parses the command line, loads the
//! configuration and hands off to berth-cri (`serve`) or berth-core (`run`).

mod catch_panic;
mod check;
mod config;
mod deadline;
mod incoming;
mod metrics;
mod notify;
mod pull_helper;
mod run;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "berth: a Kubernetes container runtime (CRI)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI (RuntimeService and ImageService) on a unix socket.
    // Boxed: the flags outgrow the other variants (clippy's
    // large_enum_variant).
    Serve(Box<serve::ServeArgs>),
    /// Check this node: kernel features, cgroups, CRIU, CNI — what is ready
    /// and what is missing (exit code 1 when something required is).
    Check {
        /// Configuration file (default: /etc/berth/config.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run one command in a new container from a rootfs directory and exit
    /// with its status (new mnt/uts/ipc/pid/net namespaces, default
    /// capabilities, masked and read-only paths, loopback up).
    Run {
        /// The root filesystem directory.
        #[arg(long)]
        rootfs: PathBuf,
        /// Where runtime-core keeps the container's state.
        #[arg(long, default_value = "/run/berth/run")]
        state: PathBuf,
        /// Container id (default: run-<pid>).
        #[arg(long)]
        id: Option<String>,
        /// Hostname inside the container.
        #[arg(long)]
        hostname: Option<String>,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration (TOML, with comments).
    Default,
}

fn main() {
    // The sealed copy of this binary is also every container's init.
    berth_core::init::run_if_requested();
    // A container's monitor is this binary too (its code pages are shared
    // with the daemon's); it never returns from here.
    berth_cri::monitor::run_from_args();
    // Each pull's fetch runs in a helper process of this binary.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == berth_cri::image::helper::PULL_ARG)
    {
        std::process::exit(pull_helper::main(&args[2..]));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::main(*args).map(|()| 0),
        Command::Check { config } => check::main(config.as_deref()),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            Ok(0)
        }
        Command::Run {
            rootfs,
            state,
            id,
            hostname,
            command,
        } => run::main(run::RunArgs {
            rootfs,
            state,
            id: id.unwrap_or_else(|| format!("run-{}", std::process::id())),
            hostname,
            command,
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::exit(1);
        }
    }
}
