//! The gRPC dispatch table of the CRI `RuntimeService`: each RPC hands its
//! request to the file that implements it.

use tonic::{Request, Response, Status};

use super::*;

#[tonic::async_trait]
impl proto::runtime_service_server::RuntimeService for RuntimeServiceImpl {
    async fn version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(version::version(&request.into_inner())))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let req = request.into_inner();
        let cni = self.cni.clone();
        let (network, described) = blocking(move || {
            Ok::<_, RuntimeError>(match &cni {
                Some(c) => (c.network_status(), req.verbose.then(|| c.describe())),
                None => (Err("no pod network plugin configured".to_string()), None),
            })
        })
        .await?;
        Ok(Response::new(status::status(
            &req,
            network,
            described,
            self.cdi.settings(),
            &self.config.handlers,
        )))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        self.run_pod_sandbox_rpc(request).await
    }
    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        self.stop_pod(&request.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        self.remove_pod_sandbox_rpc(request).await
    }
    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.pod_status(&req.pod_sandbox_id, req.verbose).await?,
        ))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let mut items = Vec::new();
        for entry in self.sandboxes.registry.all() {
            let rec = entry.lock().await;
            // A record removed while we waited for its lock is gone.
            if !rec.removed && sandbox_list::matches(&rec, &filter) {
                items.push(rec.to_cri());
            }
        }
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        self.create_container_rpc(request).await
    }
    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        self.start_container_rpc(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(proto::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        let req = request.into_inner();
        self.stop_container_rpc(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(proto::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        self.remove_container_rpc(request).await
    }
    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.container_status_rpc(&req.container_id, req.verbose)
                .await?,
        ))
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self.list_containers_rpc(&filter).await?;
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        let rec = self.current_container(&req.container_id).await?;
        let containers = self.containers.clone();
        let resp =
            blocking(move || exec_sync::exec_sync(&containers, &rec, req.cmd, req.timeout)).await?;
        Ok(Response::new(resp))
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        self.reopen_container_log_rpc(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(&self.config)))
    }

    async fn container_stats(
        &self,
        request: Request<proto::ContainerStatsRequest>,
    ) -> Result<Response<proto::ContainerStatsResponse>, Status> {
        let stats = self.container_stats_of(request.into_inner()).await?;
        Ok(Response::new(proto::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<proto::ListContainerStatsRequest>,
    ) -> Result<Response<proto::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats = self.list_container_stats_of(filter).await?;
        Ok(Response::new(proto::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<proto::PodSandboxStatsRequest>,
    ) -> Result<Response<proto::PodSandboxStatsResponse>, Status> {
        let stats = self.pod_sandbox_stats_of(request.into_inner()).await?;
        Ok(Response::new(proto::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Result<Response<proto::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let stats = self.list_pod_sandbox_stats_of(filter).await?;
        Ok(Response::new(proto::ListPodSandboxStatsResponse { stats }))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<proto::ListMetricDescriptorsRequest>,
    ) -> Result<Response<proto::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(proto::ListMetricDescriptorsResponse {
            descriptors: stats::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<proto::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<proto::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self.pod_metrics().await?;
        Ok(Response::new(proto::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn get_container_events(
        &self,
        _request: Request<proto::GetEventsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::ContainerEventResponse>>, Status> {
        use tokio_stream::StreamExt;
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe())
            .filter_map(|ev| match ev {
                Ok(ev) => Some(Ok(std::sync::Arc::unwrap_or_clone(ev))),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "a container event subscriber fell behind");
                    None
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn update_container_resources(
        &self,
        request: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Result<Response<proto::UpdateContainerResourcesResponse>, Status> {
        self.update_container_resources_rpc(request.into_inner())
            .await?;
        Ok(Response::new(proto::UpdateContainerResourcesResponse {}))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<proto::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<proto::UpdatePodSandboxResourcesResponse>, Status> {
        self.update_pod_sandbox_resources_rpc(request.into_inner())
            .await?;
        Ok(Response::new(proto::UpdatePodSandboxResourcesResponse {}))
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<proto::StreamPodSandboxesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamPodSandboxesResponse>>, Status>
    {
        let filter = request.into_inner().filter;
        let list = self.list_pod_sandbox(Request::new(proto::ListPodSandboxRequest { filter }));
        streamed(
            list,
            |r| r.items,
            |pod_sandboxes| proto::StreamPodSandboxesResponse { pod_sandboxes },
        )
        .await
    }

    async fn stream_containers(
        &self,
        request: Request<proto::StreamContainersRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamContainersResponse>>, Status> {
        let filter = request.into_inner().filter;
        let list = self.list_containers(Request::new(proto::ListContainersRequest { filter }));
        streamed(
            list,
            |r| r.containers,
            |containers| proto::StreamContainersResponse { containers },
        )
        .await
    }

    async fn stream_container_stats(
        &self,
        request: Request<proto::StreamContainerStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamContainerStatsResponse>>, Status>
    {
        let filter = request.into_inner().filter;
        let list =
            self.list_container_stats(Request::new(proto::ListContainerStatsRequest { filter }));
        streamed(
            list,
            |r| r.stats,
            |container_stats| proto::StreamContainerStatsResponse { container_stats },
        )
        .await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<proto::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamPodSandboxStatsResponse>>, Status>
    {
        let filter = request.into_inner().filter;
        let list =
            self.list_pod_sandbox_stats(Request::new(proto::ListPodSandboxStatsRequest { filter }));
        streamed(
            list,
            |r| r.stats,
            |pod_sandbox_stats| proto::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )
        .await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<proto::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamPodSandboxMetricsResponse>>, Status>
    {
        let list =
            self.list_pod_sandbox_metrics(Request::new(proto::ListPodSandboxMetricsRequest {}));
        streamed(
            list,
            |r| r.pod_metrics,
            |pod_sandbox_metrics| proto::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )
        .await
    }

    async fn update_runtime_config(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        self.update_runtime_config_rpc(request).await
    }
    async fn exec(
        &self,
        request: Request<proto::ExecRequest>,
    ) -> Result<Response<proto::ExecResponse>, Status> {
        let url = self.exec_url(request.into_inner()).await?;
        Ok(Response::new(proto::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        let url = self.attach_url(request.into_inner()).await?;
        Ok(Response::new(proto::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<proto::PortForwardRequest>,
    ) -> Result<Response<proto::PortForwardResponse>, Status> {
        let url = self.port_forward_url(request.into_inner()).await?;
        Ok(Response::new(proto::PortForwardResponse { url }))
    }

    /// Dumps a running container with CRIU into a checkpoint archive at
    /// `location`, leaving it running (see `container_checkpoint`).
    async fn checkpoint_container(
        &self,
        request: Request<proto::CheckpointContainerRequest>,
    ) -> Result<Response<proto::CheckpointContainerResponse>, Status> {
        self.checkpoint_container_rpc(request).await
    }
    /// Dumps a pod's running containers at one moment into a directory
    /// (see `pod_checkpoint`).
    async fn checkpoint_pod(
        &self,
        request: Request<proto::CheckpointPodRequest>,
    ) -> Result<Response<proto::CheckpointPodResponse>, Status> {
        self.checkpoint_pod_rpc(request).await
    }

    /// A new pod with every container of a pod checkpoint restored into it.
    async fn restore_pod(
        &self,
        request: Request<proto::RestorePodRequest>,
    ) -> Result<Response<proto::RestorePodResponse>, Status> {
        self.restore_pod_rpc(request).await
    }
}

/// A list-streaming RPC: its unary twin's result, in batches.
async fn streamed<L, T, R>(
    list: impl std::future::Future<Output = Result<Response<L>, Status>>,
    items: impl FnOnce(L) -> Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> Result<Response<tonic::codegen::BoxStream<R>>, Status>
where
    T: prost::Message,
    R: Send + 'static,
{
    let all = items(list.await?.into_inner());
    Ok(Response::new(batches(all, wrap)))
}
