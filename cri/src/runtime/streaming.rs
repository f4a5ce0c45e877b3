//! Exec, Attach and PortForward: each checks its request and the target,
//! then has the streaming server issue a one-time URL for the session.

use std::sync::Arc;

use tonic::Status;

use super::error::RuntimeError;
use super::{container, exec_sync, sandbox, RuntimeServiceImpl};
use crate::proto;

impl RuntimeServiceImpl {
    /// Exec: the streaming URL of a session running `req.cmd` in the
    /// container.
    pub(super) async fn exec_url(&self, req: proto::ExecRequest) -> Result<String, Status> {
        if req.tty && req.stderr {
            return Err(RuntimeError::invalid(
                "stderr",
                "tty and stderr cannot both be true (the terminal carries both)",
            )
            .into());
        }
        let stream = self.streaming_for(req.stdin, req.stdout, req.stderr)?;
        let target = {
            let rec = self.current_container(&req.container_id).await?;
            let spec = exec_sync::process_spec(&rec, req.cmd)?;
            crate::stream::exec::ExecTarget {
                task: self.containers.task(&rec),
                container_id: rec.id.to_string(),
                spec,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                tty: req.tty,
            }
        };
        let url = stream
            .issue(crate::stream::StreamRequest::Exec(Box::new(target)))
            .map_err(RuntimeError::from)?;
        Ok(url)
    }

    /// Attach: the streaming URL of a session on the container's stdio.
    pub(super) async fn attach_url(&self, req: proto::AttachRequest) -> Result<String, Status> {
        let stream = self.streaming_for(req.stdin, req.stdout, req.stderr)?;
        let target = {
            let rec = self.current_container(&req.container_id).await?;
            RuntimeError::require(
                &rec,
                container::ContainerState::Running,
                "attach needs it running",
            )?;
            let config = rec.config();
            if req.stdin && !config.stdin {
                return Err(RuntimeError::invalid(
                    "stdin",
                    "the container was not created with stdin: true",
                )
                .into());
            }
            // The container's terminal decides (as containerd does): one
            // stream, no stderr.
            crate::stream::attach::AttachTarget {
                task: self.containers.task(&rec),
                container_id: rec.id.to_string(),
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr && !config.tty,
                tty: config.tty,
            }
        };
        let url = stream
            .issue(crate::stream::StreamRequest::Attach(target))
            .map_err(RuntimeError::from)?;
        Ok(url)
    }

    /// PortForward: the streaming URL of a session forwarding to the pod's
    /// ports (in its network namespace).
    pub(super) async fn port_forward_url(
        &self,
        req: proto::PortForwardRequest,
    ) -> Result<String, Status> {
        let stream = self.streaming()?;
        let mut ports = Vec::new();
        for (i, p) in req.port.iter().enumerate() {
            match u16::try_from(*p) {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(RuntimeError::invalid(
                        format!("port[{i}]"),
                        format!("{p} is not a TCP port"),
                    )
                    .into())
                }
            }
        }
        let netns = {
            let rec = self.locked_sandbox(&req.pod_sandbox_id).await?;
            if rec.state != sandbox::SandboxState::Ready {
                return Err(RuntimeError::SandboxNotReady {
                    id: rec.id.to_string(),
                    reason: "is not ready",
                }
                .into());
            }
            match (
                rec.network,
                rec.namespaces.as_ref().and_then(|n| n.net.clone()),
            ) {
                (sandbox::NsMode::Pod, Some(net)) => net,
                // Host network: the host's namespace (the daemon's).
                _ => std::path::PathBuf::from("/proc/self/ns/net"),
            }
        };
        let url = stream
            .issue(crate::stream::StreamRequest::PortForward(
                crate::stream::portforward::Target { netns, ports },
            ))
            .map_err(RuntimeError::from)?;
        Ok(url)
    }

    /// The streaming server, for a session that carries at least one of
    /// the three streams.
    fn streaming_for(
        &self,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<&Arc<crate::stream::StreamServer>, Status> {
        if !(stdin || stdout || stderr) {
            return Err(RuntimeError::invalid(
                "stdin",
                "one of stdin, stdout or stderr must be true",
            )
            .into());
        }
        self.streaming()
    }

    fn streaming(&self) -> Result<&Arc<crate::stream::StreamServer>, Status> {
        self.stream.as_ref().ok_or_else(|| {
            Status::unavailable(
                "berth runs without a streaming server (stream_addr not configured)",
            )
        })
    }
}
