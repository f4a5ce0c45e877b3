//! The stats RPCs (ContainerStats, PodSandboxStats, their List forms and
//! ListPodSandboxMetrics): live records gathered under their locks, then
//! sampled off the async threads.

use tonic::Status;

use super::error::RuntimeError;
use super::{container, sandbox, stats, RuntimeServiceImpl};
use crate::proto;
use crate::util::blocking;

impl RuntimeServiceImpl {
    /// ContainerStats: one live container's figures.
    pub(super) async fn container_stats_of(
        &self,
        req: proto::ContainerStatsRequest,
    ) -> Result<proto::ContainerStats, Status> {
        let entry = self
            .containers
            .registry
            .get(&req.container_id, "container_id")?;
        let view = {
            let rec = entry.lock().await;
            if rec.removed {
                return Err(self.containers.registry.not_found(&req.container_id).into());
            }
            stats::ContainerView::of(&rec)
        };
        let (sampler, containers, images) = (
            self.sampler.clone(),
            self.containers.clone(),
            self.images.clone(),
        );
        let stats = blocking(move || {
            let sample = sampler.sample_container(&containers, &images, &view);
            Ok::<_, RuntimeError>(sampler.container_stats(&images, &view, &sample))
        })
        .await?;
        Ok(stats)
    }

    /// ListContainerStats: the figures of the live containers `filter` passes.
    pub(super) async fn list_container_stats_of(
        &self,
        filter: proto::ContainerStatsFilter,
    ) -> Result<Vec<proto::ContainerStats>, Status> {
        let views = self
            .live_containers(self.containers.registry.all(), |rec| {
                stats::container_matches(rec, &filter)
            })
            .await?;
        let (sampler, containers, images) = (
            self.sampler.clone(),
            self.containers.clone(),
            self.images.clone(),
        );
        let stats = blocking(move || {
            Ok::<_, RuntimeError>(
                views
                    .iter()
                    .map(|v| {
                        let s = sampler.sample_container(&containers, &images, v);
                        sampler.container_stats(&images, v, &s)
                    })
                    .collect(),
            )
        })
        .await?;
        Ok(stats)
    }

    /// PodSandboxStats: one pod's figures with its live containers'.
    pub(super) async fn pod_sandbox_stats_of(
        &self,
        req: proto::PodSandboxStatsRequest,
    ) -> Result<proto::PodSandboxStats, Status> {
        let (view, id) = {
            let rec = self.locked_sandbox(&req.pod_sandbox_id).await?;
            (stats::PodView::of(&rec), rec.id.clone())
        };
        let members = self
            .live_containers(self.containers.registry.members(&id), |_| true)
            .await?;
        let mut sampled = self.sample_pods(vec![(view, members)]).await?;
        let (pod, sample) = sampled
            .pop()
            .ok_or_else(|| Status::internal("sampling the pod gave no figures"))?;
        Ok(self.sampler.pod_stats(&self.images, &pod, &sample))
    }

    /// ListPodSandboxStats: the figures of the ready pods `filter` passes.
    pub(super) async fn list_pod_sandbox_stats_of(
        &self,
        filter: proto::PodSandboxStatsFilter,
    ) -> Result<Vec<proto::PodSandboxStats>, Status> {
        let pods = self
            .pods_with_members(|rec| {
                rec.state == sandbox::SandboxState::Ready && stats::pod_matches(rec, &filter)
            })
            .await?;
        let stats = self
            .sample_pods(pods)
            .await?
            .iter()
            .map(|(pod, s)| self.sampler.pod_stats(&self.images, pod, s))
            .collect();
        Ok(stats)
    }

    /// ListPodSandboxMetrics: every ready pod's metrics.
    pub(super) async fn pod_metrics(&self) -> Result<Vec<proto::PodSandboxMetrics>, Status> {
        let pods = self
            .pods_with_members(|rec| rec.state == sandbox::SandboxState::Ready)
            .await?;
        let pod_metrics = self
            .sample_pods(pods)
            .await?
            .iter()
            .map(|(pod, s)| stats::pod_metrics(pod, s))
            .collect();
        Ok(pod_metrics)
    }

    /// Views of the live (created or running) containers passing `keep`,
    /// brought up to date with their monitors' exit records.
    async fn live_containers(
        &self,
        entries: Vec<crate::store::Entry<container::ContainerRecord>>,
        keep: impl Fn(&container::ContainerRecord) -> bool,
    ) -> Result<Vec<stats::ContainerView>, Status> {
        let mut out = Vec::new();
        for entry in entries {
            let mut rec = entry.lock().await;
            if rec.removed {
                continue;
            }
            self.containers.refresh_and_save(&mut rec)?;
            if rec.state.is_live() && keep(&rec) {
                out.push(stats::ContainerView::of(&rec));
            }
        }
        Ok(out)
    }

    /// Samples pods (and their live containers) off the async threads.
    async fn sample_pods(
        &self,
        pods: Vec<(stats::PodView, Vec<stats::ContainerView>)>,
    ) -> Result<Vec<(stats::PodView, stats::PodSample)>, Status> {
        let (sampler, containers, images) = (
            self.sampler.clone(),
            self.containers.clone(),
            self.images.clone(),
        );
        blocking(move || {
            Ok::<_, RuntimeError>(
                pods.into_iter()
                    .map(|(pod, members)| {
                        let s = sampler.sample_pod(&containers, &images, &pod, members);
                        (pod, s)
                    })
                    .collect(),
            )
        })
        .await
    }

    /// Pods passing `keep` (and not removed), with their live containers.
    async fn pods_with_members(
        &self,
        keep: impl Fn(&sandbox::SandboxRecord) -> bool,
    ) -> Result<Vec<(stats::PodView, Vec<stats::ContainerView>)>, Status> {
        let mut pods = Vec::new();
        for entry in self.sandboxes.registry.all() {
            let (view, id) = {
                let rec = entry.lock().await;
                if rec.removed || !keep(&rec) {
                    continue;
                }
                (stats::PodView::of(&rec), rec.id.clone())
            };
            let members = self
                .live_containers(self.containers.registry.members(&id), |_| true)
                .await?;
            pods.push((view, members));
        }
        Ok(pods)
    }
}
