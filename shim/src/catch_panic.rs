//! A tower layer that turns a panic in a request handler into a gRPC
//! `Internal` status for that one request.
//!
//! Without it a panic unwinds the connection's task: the client sees a
//! broken connection instead of an answer, and every other call in flight on
//! that connection (kubelet multiplexes them all on one) fails with it.
//! Panics are bugs; this keeps one from taking other requests down and logs
//! it with the method so it can be found.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tonic::codegen::http;

/// The layer (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> tower::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;
    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// The service the layer wraps around each gRPC service.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CatchPanic<S>
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
        let method = req.uri().path().to_string();
        let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(fut) => fut,
            Err(payload) => {
                return futures::future::ready(Ok(internal(&method, payload))).boxed();
            }
        };
        AssertUnwindSafe(fut)
            .catch_unwind()
            .map(move |r| r.unwrap_or_else(|payload| Ok(internal(&method, payload))))
            .boxed()
    }
}

fn internal<B: Default>(method: &str, payload: Box<dyn Any + Send>) -> http::Response<B> {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(method, panic = %msg, "a request handler panicked");
    tonic::Status::internal(format!("berth: internal error in {method}: {msg}")).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_service_lives_on() {
        let inner = tower::service_fn(|req: http::Request<String>| async move {
            if req.uri().path() == "/boom" {
                panic!("handler bug");
            }
            Ok::<_, std::convert::Infallible>(http::Response::new("ok".to_string()))
        });
        let mut svc = CatchPanicLayer.layer(inner);
        let req = |p: &str| http::Request::builder().uri(p).body(String::new()).unwrap();
        let resp = svc.ready().await.unwrap().call(req("/boom")).await.unwrap();
        let status = tonic::Status::from_header_map(resp.headers()).expect("a grpc status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("/boom"), "{}", status.message());
        assert!(
            status.message().contains("handler bug"),
            "{}",
            status.message()
        );
        let resp = svc.ready().await.unwrap().call(req("/fine")).await.unwrap();
        assert_eq!(resp.into_body(), "ok");
    }
}
