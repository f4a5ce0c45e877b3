//! A tower layer that answers a call whose `grpc-timeout` passes with
//! `DeadlineExceeded`, as grpc-go servers (containerd, CRI-O) do and as
//! critest's "public image should timeout if requested" expects.
//!
//! tonic's server enforces `grpc-timeout` too, but answers `Cancelled`
//! ("Timeout expired"); whichever of the client's own deadline and the
//! server's answer arrives first decides what the caller sees, so a loaded
//! node flipped that spec. This layer runs inside tonic's and fires no later
//! than it (a millisecond earlier; tonic polls the service before its own
//! timer), so the answer is always `DeadlineExceeded`. Dropping the handler
//! future cancels the work, as tonic's timeout does.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tonic::codegen::http;

/// The layer (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service the layer wraps around each gRPC service.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_timeout);
        let fut = self.inner.call(req);
        let Some(timeout) = timeout else {
            return fut.boxed();
        };
        let at = tokio::time::Instant::now()
            .checked_add(timeout.saturating_sub(Duration::from_millis(1)));
        async move {
            let Some(at) = at else { return fut.await };
            match tokio::time::timeout_at(at, fut).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(
                    "the call's deadline (grpc-timeout) passed",
                )
                .into_http()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn timeouts_parse_as_grpc_writes_them() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_timeout("999999u"),
            Some(Duration::from_micros(999_999))
        );
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_passed_deadline_is_deadline_exceeded_and_others_run_through() {
        let inner = tower::service_fn(|req: http::Request<String>| async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_string()))
        });
        let mut svc = DeadlineLayer.layer(inner);
        let req = |p: &str, t: Option<&str>| {
            let mut b = http::Request::builder().uri(p);
            if let Some(t) = t {
                b = b.header("grpc-timeout", t);
            }
            b.body(String::new()).unwrap()
        };
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(req("/slow", Some("20m")))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(resp.headers()).expect("a grpc status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(req("/fast", Some("5S")))
            .await
            .unwrap();
        assert_eq!(resp.into_body(), "ok");
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(req("/fast", None))
            .await
            .unwrap();
        assert_eq!(resp.into_body(), "ok");
    }
}
