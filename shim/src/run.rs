//! `berth run`: one container from a rootfs directory, by hand.

use std::path::PathBuf;

use anyhow::Context;
use berth_core::{Config, Container, Process};

pub struct RunArgs {
    pub rootfs: PathBuf,
    pub state: PathBuf,
    pub id: String,
    pub hostname: Option<String>,
    pub command: Vec<String>,
}

pub fn main(args: RunArgs) -> anyhow::Result<i32> {
    let rootfs = std::fs::canonicalize(&args.rootfs)
        .with_context(|| format!("rootfs {}", args.rootfs.display()))?;
    let mut config = Config::new(rootfs);
    config.hostname = args.hostname;
    let mut container =
        Container::create(&args.state, &args.id, config).context("create the container")?;
    let result = container
        .run(Process::new(args.command).inherit_stdio())
        .context("start the container")
        .and_then(|h| h.wait().context("wait for the container"));
    container.destroy().context("destroy the container")?;
    Ok(result?.code())
}
