use super::*;

use crate::image::reference::Digest;

fn request(version: u32) -> Request {
    Request {
        version,
        image: "registry.test/app:1".into(),
        auth: WireAuth::Basic("u".into(), "p".into()),
        root: "/nonexistent".into(),
        registry_config_dir: None,
        opts: PullOptions::default(),
        plain_http: vec![],
    }
}

/// The helper's side on a thread; the test holds the daemon's end.
fn helper() -> (Channel, std::thread::JoinHandle<i32>) {
    let (daemon, theirs) = Channel::pair().unwrap();
    let t = std::thread::spawn(move || serve_on(Channel::from_fd(theirs)));
    (daemon.with_limit(MAX_REPLY), t)
}

#[test]
fn a_request_of_another_protocol_version_is_answered_with_an_error() {
    let (daemon, t) = helper();
    daemon.send(&request(VERSION + 1), &[]).unwrap();
    let (reply, _) = daemon.recv::<Reply>().unwrap();
    let err = reply.result.unwrap_err();
    assert_eq!(err.kind, ImageErrorKind::Internal);
    assert!(err.message.contains("protocol version"), "{}", err.message);
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn an_oversize_or_malformed_request_ends_the_helper_without_an_answer() {
    let (daemon, t) = helper();
    daemon.send(&"x".repeat(MAX_REQUEST + 1), &[]).unwrap();
    assert!(matches!(daemon.recv::<Reply>(), Err(ChannelError::Closed)));
    assert_eq!(t.join().unwrap(), 1);

    let (daemon, t) = helper();
    daemon
        .send(&serde_json::json!({"version": VERSION}), &[])
        .unwrap();
    assert!(matches!(daemon.recv::<Reply>(), Err(ChannelError::Closed)));
    assert_eq!(t.join().unwrap(), 1);

    // The daemon went away before asking: nothing to do.
    let (daemon, t) = helper();
    drop(daemon);
    assert_eq!(t.join().unwrap(), 0);
}

#[test]
fn credentials_and_errors_cross_unchanged() {
    for a in [
        RegistryAuth::Anonymous,
        RegistryAuth::Basic("user".into(), "pa:ss".into()),
        RegistryAuth::Bearer("tok".into()),
    ] {
        let wire = WireAuth::from(&a);
        let json = serde_json::to_vec(&wire).unwrap();
        let back: WireAuth = serde_json::from_slice(&json).unwrap();
        assert_eq!(format!("{:?}", RegistryAuth::from(back)), format!("{a:?}"));
    }
    // An error sent back maps to the code and message it had here.
    let name = ImageName::parse("r.test/x:1").unwrap();
    let here = [
        ImageError::NotFound {
            image: name.to_string(),
            reason: "manifest unknown".into(),
        },
        ImageError::Blob(crate::image::blobs::BlobError::DigestMismatch {
            expected: Digest::from_sha256([1; 32]),
            actual: Digest::from_sha256([2; 32]),
        }),
        ImageError::check_declared_size(&name, "image config", 10, 1).unwrap_err(),
    ];
    for e in here {
        let sent = ImageError::Remote {
            kind: e.kind(),
            message: crate::util::error_chain(&e),
        };
        let (a, b) = (tonic::Status::from(e), tonic::Status::from(sent));
        assert_eq!(a.code(), b.code());
        assert_eq!(a.message(), b.message());
    }
}
