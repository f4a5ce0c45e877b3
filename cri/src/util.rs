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

/// Sets `O_NONBLOCK` on `fd` (a pipe end, a terminal, a socket).
pub(crate) fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Nanoseconds since the epoch (CRI timestamps).
/// Bytes as (lossy) UTF-8 text, for protobuf `bytes` fields in JSON.
pub(crate) fn lossy_text<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// `now + after`, saturating far in the future instead of overflowing: a
/// request's timeout (an `i64` of seconds) may be anything, and `Instant +
/// Duration` panics on overflow.
pub(crate) fn deadline_after(after: std::time::Duration) -> std::time::Instant {
    saturating_add(std::time::Instant::now(), after)
}

/// `t + d`, or about a century after `t` when that overflows.
pub(crate) fn saturating_add(t: std::time::Instant, d: std::time::Duration) -> std::time::Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(FAR_FUTURE))
        .unwrap_or(t)
}

/// About a century: "never" for a deadline.
const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

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

/// Hands freed heap memory back to the kernel. A pull allocates tens of MiB
/// of buffers across the runtime's threads; glibc keeps what is freed in
/// its per-thread arenas, so without this a daemon that pulled once stays
/// that large while idle. Cheap when there is nothing to release.
pub(crate) fn release_free_memory() {
    berth_core::process::release_free_memory();
}

/// Largest encoded batch of a list-streaming RPC: well under gRPC's default
/// 4 MiB message limit, so any client can read it.
const BATCH_BYTES: usize = 1 << 20;

/// Splits a list into the batches of a CRI list-streaming RPC (`Stream*`):
/// each batch non-empty and at most [`BATCH_BYTES`] encoded (a single item
/// larger than that goes alone), every item exactly once, in order; an
/// empty list is a stream that ends at once.
pub(crate) fn batches<T, R>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> tonic::codegen::BoxStream<R>
where
    T: prost::Message,
    R: Send + 'static,
{
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for item in items {
        // Field tag + length prefix of a repeated message: at most 6 bytes.
        let len = item.encoded_len() + 6;
        if !cur.is_empty() && size + len > BATCH_BYTES {
            out.push(Ok(wrap(std::mem::take(&mut cur))));
            size = 0;
        }
        size += len;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(Ok(wrap(cur)));
    }
    Box::pin(tokio_stream::iter(out))
}

/// Bytes (allocated blocks) and inodes under `dir`, like `du`: symlinks
/// not followed, other file systems not entered, hard links counted once.
/// A missing dir is `(0, 0)`; entries that vanish during the walk are
/// skipped.
pub(crate) fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (top.blocks() * 512, 1u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !seen.insert(m.ino()) {
                continue;
            }
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// The first `dir/name` that is an executable file.
pub(crate) fn find_executable(
    name: &str,
    dirs: impl IntoIterator<Item = std::path::PathBuf>,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `name` found in the directories of `PATH` (as an absolute path), for
/// helpers run from processes with another environment (monitors); `name`
/// itself when it is not there.
pub fn find_in_path(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_executable(name, std::env::split_paths(&path)).unwrap_or_else(|| name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_split_by_size_and_keep_every_item_once() {
        use tokio_stream::StreamExt;
        let big = "x".repeat(300_000);
        let items: Vec<crate::proto::KeyValue> = (0..10)
            .map(|i| crate::proto::KeyValue {
                key: i.to_string(),
                value: big.clone().into_bytes(),
            })
            .collect();
        let got: Vec<Vec<crate::proto::KeyValue>> = batches(items.clone(), |v| v)
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert!(got.len() >= 3, "10 x 300 kB in batches of at most 1 MiB");
        assert!(got.iter().all(|b| !b.is_empty()));
        assert_eq!(got.concat(), items);
        let none: Vec<_> = batches(Vec::<crate::proto::KeyValue>::new(), |v| v)
            .collect::<Vec<_>>()
            .await;
        assert!(none.is_empty());
    }

    #[test]
    fn dir_usage_counts_inodes_and_blocks_once() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(dir_usage(&t.path().join("missing")), (0, 0));
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(t.path().join("d/f"), t.path().join("g")).unwrap();
        std::os::unix::fs::symlink("/usr", t.path().join("l")).unwrap();
        let (bytes, inodes) = dir_usage(t.path());
        assert_eq!(inodes, 4, "top, d, f (once), l");
        assert!(bytes >= 10_000, "{bytes}");
    }

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

/// The crash-point test harness's hook (`tests/tests/crash_points.rs`): in
/// a debug build whose `BERTH_CRASH_AT` environment variable names `step`,
/// the daemon kills itself with SIGKILL there, as `kill -9` would (no
/// destructor, no flush). A release build compiles this to nothing.
#[inline]
pub(crate) fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("BERTH_CRASH_AT").is_some_and(|v| v == step) {
        use nix::sys::signal::{kill, raise, Signal};
        tracing::warn!(step, "crash point: killing the daemon (BERTH_CRASH_AT)");
        if CRASH_KILLS_PARENT.load(std::sync::atomic::Ordering::Relaxed) {
            // A helper (the pull helper): the daemon is its parent.
            let _ = kill(nix::unistd::getppid(), Signal::SIGKILL);
        }
        let _ = raise(Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// Set in a helper process of the daemon (its child): a crash point there
/// kills the daemon too, as the node going down at that step would.
pub(crate) static CRASH_KILLS_PARENT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The named crash points, in the order a pod's life meets them (the
/// harness iterates over these; a unit test checks each is in the code).
pub const CRASH_POINTS: &[&str] = &[
    "pull:unpacked",
    "run_pod:pinned",
    "run_pod:network",
    "run_pod:pod_init",
    "run_pod:recorded",
    "create:prepared",
    "create:spawned",
    "create:recorded",
    "start:released",
    "stop:signalled",
    "remove:destroyed",
    "remove:layer_removed",
    "stop_pod:stopped",
    "remove_pod:files_removed",
];

#[cfg(test)]
mod crash_point_tests {
    /// Every named crash point is hit somewhere in the daemon's code.
    #[test]
    fn every_crash_point_is_in_the_code() {
        fn sources(dir: &std::path::Path, out: &mut String) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    sources(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push_str(&std::fs::read_to_string(&p).unwrap());
                }
            }
        }
        let mut all = String::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut all,
        );
        for p in super::CRASH_POINTS {
            assert!(
                all.contains(&format!("crash_point(\"{p}\")")),
                "{p} is hit nowhere"
            );
        }
    }
}

/// The most bytes of an error message berth sends (`grpc-message` is a
/// header: clients cap header lists at 16 KiB, and a message quoting a
/// 1 MiB request field would break the connection instead of reporting).
const MAX_STATUS_MESSAGE: usize = 4096;

/// A gRPC status with `message` cut to [`MAX_STATUS_MESSAGE`] bytes (at a
/// character boundary, saying how long it was).
pub(crate) fn status(code: tonic::Code, message: String) -> tonic::Status {
    tonic::Status::new(code, bounded(message))
}

fn bounded(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE - 64;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (message cut: {} bytes)",
        &message[..end],
        message.len()
    )
}

#[cfg(test)]
mod status_tests {
    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = format!("container \"{}\" not found", "é".repeat(1 << 19));
        let s = super::status(tonic::Code::NotFound, long);
        assert!(
            s.message().len() <= super::MAX_STATUS_MESSAGE,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("bytes)"));
        assert_eq!(super::bounded("short".into()), "short");
    }
}
