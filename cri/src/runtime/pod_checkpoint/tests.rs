use std::collections::HashMap;

use super::restore::match_configs;
use super::*;

fn manifest(names: &[&str]) -> PodManifest {
    PodManifest {
        version: MANIFEST_VERSION,
        runtime: "berth".into(),
        checkpointed_time: "2026-12-05T00:00:00Z".into(),
        pod: ManifestPod {
            id: "p1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            attempt: 0,
        },
        runtime_handler: String::new(),
        namespaces: ManifestNamespaces {
            network: "pod".into(),
            pid: "container".into(),
            ipc: "pod".into(),
            user: false,
        },
        ips: vec!["10.88.0.5".into()],
        pod_config: vec![1, 2, 3],
        containers: names
            .iter()
            .map(|n| ManifestContainer {
                name: n.to_string(),
                id: format!("id-{n}"),
                attempt: 0,
                image: format!("registry.test/{n}:v1"),
                image_ref: "sha256:00".into(),
            })
            .collect(),
    }
}

fn config(name: &str) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn write_manifest(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join(MANIFEST), bytes).unwrap();
}

fn field(e: RuntimeError) -> String {
    match e {
        RuntimeError::InvalidArgument { field, .. } => field,
        other => panic!("not InvalidArgument: {other:?}"),
    }
}

#[test]
fn a_manifest_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&["server", "client"]);
    write_manifest(dir.path(), &serde_json::to_vec(&m).unwrap());
    assert_eq!(read_manifest(dir.path()).unwrap(), m);
    // The pod config travels as base64, the field names in camelCase.
    let v: serde_json::Value = serde_json::to_value(&m).unwrap();
    assert_eq!(v["podConfig"], "AQID");
    assert_eq!(v["containers"][0]["imageRef"], "sha256:00");
}

#[test]
fn a_bad_manifest_is_refused_naming_checkpoint_path() {
    let dir = tempfile::tempdir().unwrap();
    // None at all.
    assert_eq!(
        field(read_manifest(dir.path()).unwrap_err()),
        "checkpoint_path"
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "pod.json"),
        (
            serde_json::to_vec(&PodManifest {
                version: 9,
                ..manifest(&["a"])
            })
            .unwrap(),
            "format version 9",
        ),
        (serde_json::to_vec(&manifest(&[])).unwrap(), "no containers"),
        (serde_json::to_vec(&manifest(&["a", "a"])).unwrap(), "\"a\""),
        (serde_json::to_vec(&manifest(&["../up"])).unwrap(), "../up"),
        (serde_json::to_vec(&manifest(&[".."])).unwrap(), "\"..\""),
        (vec![b' '; (MAX_MANIFEST + 2) as usize], "over"),
    ];
    for (bytes, want) in cases {
        write_manifest(dir.path(), &bytes);
        let e = read_manifest(dir.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{want:?} not in {msg}");
        assert_eq!(field(e), "checkpoint_path");
    }
}

#[test]
fn configs_are_matched_by_name_in_checkpoint_order() {
    let m = manifest(&["server", "client"]);
    let out = match_configs(&m, vec![config("client"), config("server")]).unwrap();
    let names: Vec<_> = out
        .iter()
        .map(|c| c.metadata.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["server", "client"]);
    // An empty image is the one the container ran.
    assert_eq!(
        out[0].image.as_ref().unwrap().image,
        "registry.test/server:v1"
    );
}

#[test]
fn configs_that_do_not_match_are_refused_naming_the_field() {
    let m = manifest(&["server", "client"]);
    let cases: Vec<(Vec<proto::ContainerConfig>, &str, &str)> = vec![
        (vec![config("server")], "container_configs", "client"),
        (
            vec![config("server"), config("client"), config("extra")],
            "container_configs[2].metadata.name",
            "not checkpointed",
        ),
        (
            vec![config("server"), config("server")],
            "container_configs[1].metadata.name",
            "twice",
        ),
        (
            vec![proto::ContainerConfig::default()],
            "container_configs[0].metadata.name",
            "must be set",
        ),
    ];
    for (configs, want_field, want) in cases {
        let e = match_configs(&m, configs).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{want:?} not in {msg}");
        assert_eq!(field(e), want_field);
    }
}

#[test]
fn the_output_must_be_an_empty_directory_reached_without_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(check_output(empty.to_str().unwrap()).unwrap(), empty);
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    for (p, want) in [
        (String::new(), "must not be empty"),
        ("relative/dir".to_string(), "absolute"),
        (full.display().to_string(), "not empty"),
        (link.display().to_string(), "symlink"),
        (file.display().to_string(), "not a directory"),
        (
            dir.path().join("nope").display().to_string(),
            "does not exist",
        ),
    ] {
        let e = check_output(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{p}: {want:?} not in {msg}");
        assert_eq!(field(e), "output_path");
    }
}

#[test]
fn unknown_options_are_refused() {
    assert!(check_options(&HashMap::new()).is_ok());
    let opts = HashMap::from([
        ("zeta".to_string(), "1".to_string()),
        ("alpha".into(), "2".into()),
    ]);
    assert_eq!(
        field(check_options(&opts).unwrap_err()),
        "options[\"alpha\"]"
    );
}

#[test]
fn a_container_name_must_be_one_path_component() {
    for ok in ["web", "a.b", "x-1"] {
        assert_eq!(container_dir_name(ok), Some(ok));
    }
    for bad in ["", ".", "..", "a/b", "/abs", "nul\0"] {
        assert_eq!(container_dir_name(bad), None, "{bad:?}");
    }
}
