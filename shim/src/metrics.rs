//! Prometheus metrics and a health check over HTTP (`[metrics]`, off by
//! default): `GET /metrics` (OpenMetrics text) and `GET /healthz`.
//!
//! - `berth_cri_requests_total{method,code}` and
//!   `berth_cri_request_duration_seconds{method}`: every CRI call, from a
//!   tower layer around the gRPC services (the code is the `grpc-status`
//!   the call ended with; the time is until the response started, which
//!   for these unary calls is the call).
//! - `berth_image_pull_duration_seconds`, `berth_image_pull_bytes_total`:
//!   PullImage calls and the blob bytes downloaded and verified.
//! - `berth_pods{state}`, `berth_containers{state}`, `berth_monitors`:
//!   read from the records at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

use berth_cri::image::puller::Puller;
use berth_cri::runtime::RuntimeServiceImpl;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn pull_histogram() -> Histogram {
    // 50 ms to ~14 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// The metrics (cheap to clone: handles to the same series).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    pulls: Histogram,
    pull_bytes: Counter,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    monitors: Gauge,
}

impl Metrics {
    /// A registry with every series registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "berth_cri_requests",
            "CRI calls by method and gRPC status code",
            calls.clone(),
        );
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "berth_cri_request_duration_seconds",
            "Time to answer a CRI call, by method",
            latency.clone(),
        );
        let pulls = pull_histogram();
        registry.register(
            "berth_image_pull_duration_seconds",
            "PullImage calls, by duration",
            pulls.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register(
            "berth_image_pull_bytes",
            "Image blob bytes downloaded and verified",
            pull_bytes.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("berth_pods", "Pod sandboxes by state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "berth_containers",
            "Containers by state",
            containers.clone(),
        );
        let monitors = Gauge::default();
        registry.register(
            "berth_monitors",
            "Container monitor processes alive",
            monitors.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            calls,
            latency,
            pulls,
            pull_bytes,
            pods,
            containers,
            monitors,
        }
    }

    fn record_call(&self, method: &str, code: &str, secs: f64) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(secs);
        if method == "PullImage" && code == "OK" {
            self.pulls.observe(secs);
        }
    }

    /// Brings the scrape-time series up to date and encodes everything.
    async fn scrape(&self, runtime: &RuntimeServiceImpl, puller: &Puller) -> String {
        let inv = runtime.inventory().await;
        // Series of states that have no member any more are dropped.
        set_states(&self.pods, &inv.pods);
        set_states(&self.containers, &inv.containers);
        self.monitors
            .set(i64::try_from(inv.monitors).unwrap_or(i64::MAX));
        // The puller's own running total: the counter follows it (fetch_max
        // keeps it monotonic when two scrapes race).
        self.pull_bytes.inner().fetch_max(
            puller.downloaded_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Sets one gauge per state to its count, dropping the states not listed.
fn set_states(family: &Family<StateLabels, Gauge>, counts: &std::collections::BTreeMap<&str, u64>) {
    family.clear();
    for (state, n) in counts {
        family
            .get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
}

/// The CRI method of a gRPC path (`/runtime.v1.RuntimeService/Version` →
/// `Version`).
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The gRPC status name for a numeric code (`5` → `NotFound`; `OK` for 0,
/// as gRPC spells it).
fn code_name(code: &str) -> String {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK".to_string(),
        Ok(c) => format!("{c:?}"),
        Err(_) => "Unknown".to_string(),
    }
}

/// A tower layer recording each call (see the module docs).
#[derive(Clone)]
pub struct MetricsLayer(pub Metrics);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Measured<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        async move {
            let res = fut.await;
            // An error status is in the headers (a trailers-only answer);
            // a success carries grpc-status 0 in the trailers.
            let code = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "OK".to_string(), code_name),
                Err(_) => "Unknown".to_string(),
            };
            metrics.record_call(&method, &code, start.elapsed().as_secs_f64());
            res
        }
        .boxed()
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    runtime: RuntimeServiceImpl,
    puller: Arc<Puller>,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let mut backoff = berth_cri::conn::AcceptBackoff::default();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE must not spin a core (see berth_cri::conn).
                    backoff.failed("metrics", &e).await;
                    continue;
                }
            };
            backoff.succeeded();
            let (metrics, runtime, puller) = (metrics.clone(), runtime.clone(), puller.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (metrics, runtime, puller) =
                            (metrics.clone(), runtime.clone(), puller.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                respond(
                                    req.method(),
                                    req.uri().path(),
                                    &metrics,
                                    &runtime,
                                    &puller,
                                )
                                .await,
                            )
                        }
                    });
                // A scraper that connects and says nothing is dropped after
                // hyper's default header timeout (30 s), which needs a timer.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn respond(
    method: &http::Method,
    path: &str,
    metrics: &Metrics,
    runtime: &RuntimeServiceImpl,
    puller: &Puller,
) -> http::Response<Full<Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if method != http::Method::GET {
        return reply(405, "text/plain", "only GET\n".into());
    }
    match path {
        "/metrics" => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.scrape(runtime, puller).await,
        ),
        "/healthz" => reply(200, "text/plain", "ok\n".into()),
        _ => reply(
            404,
            "text/plain",
            "not found (try /metrics or /healthz)\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let m = Metrics::new();
        m.record_call(method_of("/runtime.v1.RuntimeService/Version"), "OK", 0.001);
        m.record_call("RunPodSandbox", &code_name("9"), 0.002);
        m.record_call("PullImage", "OK", 1.5);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains(r#"berth_cri_requests_total{method="Version",code="OK"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"berth_cri_requests_total{method="RunPodSandbox",code="FailedPrecondition"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"berth_cri_request_duration_seconds_count{method="Version"} 1"#),
            "{out}"
        );
        assert!(
            out.contains("berth_image_pull_duration_seconds_count 1"),
            "{out}"
        );
    }
}
