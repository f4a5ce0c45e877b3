//! Small helpers shared by the services: error chains for messages, the
//! clock, running blocking work off the async threads, label selectors.

use std::collections::HashMap;

/// `error: cause: cause ...` on one line, each cause once (a message that
/// already quotes its source is not repeated), so a gRPC message or a
/// monitor report says why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// Nanoseconds since the epoch (CRI timestamps).
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs blocking work (file system, mounts, namespaces, fsync, waiting for
/// a monitor) on tokio's blocking pool; its error becomes the gRPC status.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    E: Into<tonic::Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tonic::Status::internal(format!("task failed: {e}")))?
        .map_err(Into::into)
}

/// CRI label selectors: every key must be present with exactly that value.
pub(crate) fn labels_match(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_and_selectors() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        let labels = HashMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        assert!(labels_match(
            &labels,
            &HashMap::from([("a".into(), "1".into())])
        ));
        assert!(!labels_match(
            &labels,
            &HashMap::from([("a".into(), "2".into())])
        ));
        assert!(labels_match(&labels, &HashMap::new()));
    }
}
