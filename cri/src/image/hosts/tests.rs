use std::path::Path;
use std::time::Duration;

use super::parse::go_duration;
use super::*;

fn write(dir: &Path, host: &str, text: &str) {
    std::fs::create_dir_all(dir.join(host)).unwrap();
    std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
}

/// The endpoints `text` gives for `r.example`, and the config directory.
fn parse(text: &str) -> (Vec<Endpoint>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "r.example", text);
    let e = RegistryHosts::new(Some(d.path().into()))
        .endpoints("r.example")
        .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    (e, d)
}

/// The error `text` gives, after checking it names the file.
fn error(text: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "r.example", text);
    let err = RegistryHosts::new(Some(d.path().into()))
        .endpoints("r.example")
        .map(|e| panic!("{text:?} was accepted: {e:?}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("r.example/hosts.toml"), "{err}");
    err
}

#[test]
fn defaults_without_config() {
    let h = RegistryHosts::new(None);
    let e = h.endpoints("docker.io").unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].host, "registry-1.docker.io");
    assert_eq!(e[0].scheme, Scheme::Https);
    assert_eq!(e[0].path, "/v2");
    assert_eq!(e[0].dial_timeout, None);
    assert_eq!(e[0].unsupported(), None);
    assert!(!e[0].http_fallback);
    for lo in [
        "localhost:5000",
        "127.0.0.1:5000",
        "127.1.2.3",
        "[::1]:5000",
        "localhost",
    ] {
        assert!(h.endpoints(lo).unwrap()[0].http_fallback, "{lo}");
    }
    assert!(!h.endpoints("10.0.0.1:5000").unwrap()[0].http_fallback);
}

#[test]
fn mirrors_in_file_order_then_server() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "docker.io",
        r#"
server = "https://registry-1.docker.io"
[host."https://zmirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
[host."http://10.0.0.5:5000/v2"]
  capabilities = ["pull"]
  skip_verify = true
"#,
    );
    let e = RegistryHosts::new(Some(d.path().into()))
        .endpoints("docker.io")
        .unwrap();
    let hosts: Vec<_> = e.iter().map(|e| e.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "zmirror.example.com",
            "10.0.0.5:5000",
            "registry-1.docker.io"
        ]
    );
    assert_eq!(e[0].ca_files, [d.path().join("docker.io/ca.pem")]);
    assert!(e[0].is_mirror && !e[2].is_mirror);
    assert_eq!(e[1].scheme, Scheme::Http);
    assert_eq!(e[1].registry_address().as_deref(), Some("10.0.0.5:5000"));
    assert!(e[1].capabilities.pull && !e[1].capabilities.resolve && e[1].skip_verify);
}

#[test]
fn default_dir_and_plain_http_server() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "_default", "server = \"http://127.0.0.1:5000\"\n");
    let e = RegistryHosts::new(Some(d.path().into()))
        .endpoints("example.com")
        .unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].scheme, e[0].host.as_str()),
        (Scheme::Http, "127.0.0.1:5000")
    );
}

#[test]
fn bad_files_name_the_problem() {
    for (text, want) in [
        ("server = 5", "`server` must be a string"),
        ("server = \"ftp://x\"", "http:// or https://"),
        (
            "[host.\"https://m\"]\ncapabilities = [\"fly\"]",
            "unknown capability",
        ),
        ("[host.\"https://m/p?q=1\"]", "query"),
        ("server = ", "parse error"),
    ] {
        let err = error(text);
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn unknown_keys_are_ignored_as_containerd_does() {
    let (e, _d) = parse("server = \"https://r.example\"\nproxy = \"http://p:8080\"\nfuture = 1\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].unsupported(), None);
}

#[test]
fn bare_hosts_are_https_as_in_containerd() {
    let (e, _d) = parse("server = \"r.example:5000\"\n[host.\"m.example\"]\n");
    assert_eq!(
        (e[0].scheme, e[0].host.as_str()),
        (Scheme::Https, "m.example")
    );
    assert_eq!(
        (e[1].scheme, e[1].host.as_str()),
        (Scheme::Https, "r.example:5000")
    );
}

#[test]
fn client_takes_containerds_three_forms_relative_to_the_file() {
    let (e, d) = parse(
        r#"
client = "both.pem"
[host."https://a"]
  client = ["/etc/certs/one.pem", "two.pem"]
[host."https://b"]
  client = [["c.cert", "c.key"], ["/abs/d.pem", ""], "e.pem"]
[host."https://c"]
  client = []
"#,
    );
    let dir = d.path().join("r.example");
    let cert = |c: &Path, k: Option<&Path>| ClientCert {
        cert: c.to_path_buf(),
        key: k.map(Path::to_path_buf),
    };
    assert_eq!(
        e[0].client_certs,
        [
            cert(Path::new("/etc/certs/one.pem"), None),
            cert(&dir.join("two.pem"), None)
        ]
    );
    assert_eq!(
        e[1].client_certs,
        [
            cert(&dir.join("c.cert"), Some(&dir.join("c.key"))),
            cert(Path::new("/abs/d.pem"), None),
            cert(&dir.join("e.pem"), None),
        ]
    );
    assert!(e[2].client_certs.is_empty());
    assert_eq!(e[2].unsupported(), None, "an empty list asks for nothing");
    // No `server`: the top-level key applies to the registry itself.
    assert_eq!(e[3].host, "r.example");
    assert_eq!(e[3].client_certs, [cert(&dir.join("both.pem"), None)]);
    // Presented (through berth's oci-client patch), not refused.
    for ep in [&e[0], &e[1], &e[3]] {
        assert_eq!(ep.unsupported(), None);
    }
}

#[test]
fn bad_client_values_are_refused() {
    for text in [
        "client = 5",
        "client = \"\"",
        "client = [[\"only-one\"]]",
        "client = [[\"a\", \"b\", \"c\"]]",
        "client = [[\"\", \"key\"]]",
        "client = [5]",
        "[host.\"https://m\"]\nclient = { cert = \"a\" }",
    ] {
        let err = error(text);
        assert!(err.contains("`client`"), "{text:?}: {err}");
    }
}

#[test]
fn header_takes_a_string_or_a_list_per_name() {
    let (e, _d) = parse(
        r#"
[host."https://m"]
  [host."https://m".header]
    x-custom-1 = "one"
    X-Custom-2 = ["a", "b"]
[host."https://n"]
  [host."https://n".header]
    x-empty = []
[header]
  authorization-hint = "top"
"#,
    );
    let h = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    assert_eq!(
        e[0].headers,
        h(&[("X-Custom-2", &["a", "b"]), ("x-custom-1", &["one"])])
    );
    assert_eq!(e[0].unsupported(), None, "sent, not refused");
    assert_eq!(e[1].headers, h(&[("x-empty", &[])]));
    assert_eq!(e[1].unsupported(), None, "no values, nothing to send");
    assert_eq!(e[2].headers, h(&[("authorization-hint", &["top"])]));
}

#[test]
fn bad_headers_are_refused() {
    for (text, want) in [
        ("header = \"x: y\"", "must be a table"),
        ("[header]\nx-a = 5", "\"x-a\" must be a string or an array"),
        (
            "[header]\nx-a = [\"ok\", 5]",
            "\"x-a\" must be a string or an array",
        ),
        ("[header]\n\"bad name\" = \"v\"", "not a valid header name"),
        (
            "[header]\nx-a = \"v\\r\\nx-b: injected\"",
            "control characters",
        ),
    ] {
        let err = error(text);
        assert!(
            err.contains("`header`") && err.contains(want),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn paths_and_override_path_follow_containerd() {
    let (e, _d) = parse(
        r#"
server = "https://r.example/base/"
[host."https://a/registry/v2"]
  override_path = true
[host."https://b/cache"]
[host."https://c/cache/./x/../v2/"]
[host."https://d/api"]
  override_path = true
[host."https://e"]
  override_path = true
"#,
    );
    let roots: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        roots,
        [
            "/registry/v2",
            "/cache/v2",
            "/cache/v2",
            "/api",
            "",
            "/base/v2"
        ]
    );
    let addrs: Vec<_> = e.iter().map(Endpoint::registry_address).collect();
    assert_eq!(
        addrs,
        [
            Some("a/registry".to_string()),
            Some("b/cache".into()),
            Some("c/cache".into()),
            None,
            None,
            Some("r.example/base".into())
        ]
    );
    for ep in &e[..3] {
        assert_eq!(ep.unsupported(), None, "{ep:?}");
    }
    for ep in &e[3..5] {
        let u = ep.unsupported().unwrap();
        assert_eq!(u.key, "override_path");
        assert!(u.reason.contains("/v2"), "{}", u.reason);
    }
    let err = error("[host.\"https://m\"]\noverride_path = \"yes\"");
    assert!(err.contains("`override_path` must be a boolean"), "{err}");
}

#[test]
fn dial_timeout_is_a_go_duration_per_endpoint() {
    let (e, _d) = parse(
        r#"
dial_timeout = "1m30s"
[host."http://m"]
  dial_timeout = "500ms"
[host."http://n"]
  dial_timeout = "0"
[host."http://o"]
"#,
    );
    let t: Vec<_> = e.iter().map(|e| e.dial_timeout).collect();
    assert_eq!(
        t,
        [
            Some(Duration::from_millis(500)),
            Some(Duration::ZERO),
            None,
            Some(Duration::from_secs(90)),
        ]
    );
    assert!(e.iter().all(|e| e.unsupported().is_none()));
    for (text, want) in [
        ("dial_timeout = 5", "must be a duration string"),
        ("dial_timeout = \"5\"", "not a duration"),
        ("dial_timeout = \"fast\"", "not a duration"),
        ("dial_timeout = \"-1s\"", "negative"),
        ("dial_timeout = \"\"", "empty"),
        (
            "[host.\"https://m\"]\ndial_timeout = \"5 s\"",
            "not a duration",
        ),
    ] {
        let err = error(text);
        assert!(
            err.contains("`dial_timeout`") && err.contains(want),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn go_durations() {
    let ms = Duration::from_millis;
    for (s, want) in [
        ("5s", Duration::from_secs(5)),
        ("500ms", ms(500)),
        ("1.5s", ms(1500)),
        (".5s", ms(500)),
        ("1h2m3s", Duration::from_secs(3723)),
        ("+2ms", ms(2)),
        ("300us", Duration::from_micros(300)),
        ("300\u{b5}s", Duration::from_micros(300)),
        ("7ns", Duration::from_nanos(7)),
        ("0", Duration::ZERO),
        ("0s", Duration::ZERO),
    ] {
        assert_eq!(go_duration(s), Ok(want), "{s}");
    }
    for s in ["", "s", "1", "1.2.3s", "1d", "99999999999999999999h", "-0s"] {
        assert!(go_duration(s).is_err(), "{s}");
    }
}
