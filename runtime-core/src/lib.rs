//! berth-core: berth's embedded container runtime — what runc's libcontainer
//! is for Go runtimes, in Rust. It knows nothing of Kubernetes or gRPC.
//!
//! A [`Config`] describes a container (rootfs, namespaces to create or join,
//! mounts, devices, capabilities, id mappings, masked and read-only paths,
//! hostname, rlimits, sysctls, cgroup); [`Container::create`] records it;
//! [`Container::run`] (or [`Container::start`] + [`Container::release`])
//! starts its init; [`Container::exec`] adds processes; [`Container::destroy`]
//! removes everything.
//!
//! The container is set up by a freshly executed, sealed copy of the calling
//! binary (see [`init`]), so every binary that uses this crate must call
//! [`init::run_if_requested`] at the top of `main`.
//!
//! ```no_run
//! use berth_core::{Config, Container, Process};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     berth_core::init::run_if_requested();
//!     let mut config = Config::new("/var/lib/demo/rootfs");
//!     config.hostname = Some("testing".into());
//!     let mut container = Container::create("/run/demo", "demo", config)?;
//!     let init = container.run(Process::new(["/bin/sh", "-c", "hostname"]).inherit_stdio())?;
//!     println!("exited: {:?}", init.wait()?);
//!     container.destroy()?;
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

pub mod cgroups;
pub mod config;
pub mod container;
pub mod hooks;
pub mod id;
pub mod init;
pub mod ipc;
pub mod kernel;
pub mod pin;
pub mod process;
pub(crate) mod rootfs;
pub mod security;
pub(crate) mod sys;

pub use config::{Config, Mount, Namespace, NamespaceKind};
pub use container::{Container, ContainerError, Operation, State, Status};
pub use id::ContainerId;
pub use process::{ExitStatus, InitBinary, Process, ProcessHandle, Stdio};
pub use rootfs::RootfsError;
