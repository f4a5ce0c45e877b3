//! hosts.toml → [`Endpoint`]s, key by key, with containerd's meaning for each
//! (`core/remotes/docker/config/hosts.go`, `parseHostConfig`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{base_dir, default_endpoint, Capabilities, ClientCert, Endpoint, HostsError, Scheme};

/// Parses a whole file: the `[host."..."]` tables in file order, then the
/// upstream (`server`, or the registry itself), to which the top-level keys
/// apply.
pub(super) fn parse(registry: &str, text: &str, path: &Path) -> Result<Vec<Endpoint>, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let base = base_dir(path);
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| invalid("`host` must be a table of tables".into()))?;
        // Table order is file order (toml's preserve_order): it is the
        // order of preference, as in containerd.
        for (url, v) in hosts {
            let t = v
                .as_table()
                .ok_or_else(|| invalid(format!("host {url:?} must be a table")))?;
            let keys = Keys {
                t,
                label: format!("host {url:?}"),
                base,
                file: path,
            };
            out.push(keys.endpoint(url, true).map_err(invalid)?);
        }
    }
    match doc.get("server") {
        Some(v) => {
            let url = v
                .as_str()
                .ok_or_else(|| invalid("`server` must be a string".into()))?;
            let keys = Keys {
                t: &doc,
                label: format!("server {url:?}"),
                base,
                file: path,
            };
            out.push(keys.endpoint(url, false).map_err(invalid)?);
        }
        None => {
            // No `server`: the registry itself, with the top-level TLS,
            // header and timeout keys (containerd keeps those and replaces
            // the scheme, host, path and capabilities).
            let keys = Keys {
                t: &doc,
                label: "top level".into(),
                base,
                file: path,
            };
            let mut ep = default_endpoint(registry);
            ep.file = Some(path.to_path_buf());
            keys.connection(&mut ep).map_err(invalid)?;
            out.push(ep);
        }
    }
    Ok(out)
}

/// One endpoint's table (a `[host."..."]` table, or the top level).
struct Keys<'a> {
    t: &'a toml::Table,
    /// How messages name the table: `host "https://m"`, `server "..."`.
    label: String,
    /// Relative paths are relative to the file's directory.
    base: &'a Path,
    /// The file.
    file: &'a Path,
}

impl Keys<'_> {
    fn err(&self, key: &str, what: &str) -> String {
        format!("{}: `{key}` {what}", self.label)
    }

    fn endpoint(&self, url: &str, is_mirror: bool) -> Result<Endpoint, String> {
        let (scheme, host, path) = split_url(url).map_err(|e| format!("{}: {e}", self.label))?;
        let override_path = self.bool("override_path")?.unwrap_or(false);
        let mut ep = Endpoint {
            scheme,
            host,
            path: api_root(&path, override_path),
            capabilities: self.capabilities()?,
            skip_verify: false,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            headers: BTreeMap::new(),
            dial_timeout: None,
            http_fallback: false,
            is_mirror,
            file: Some(self.file.to_path_buf()),
        };
        self.connection(&mut ep)?;
        Ok(ep)
    }

    /// The keys that say how to connect: `skip_verify`, `ca`, `client`,
    /// `header`, `dial_timeout`.
    fn connection(&self, ep: &mut Endpoint) -> Result<(), String> {
        ep.skip_verify = self.bool("skip_verify")?.unwrap_or(false);
        ep.ca_files = match self.t.get("ca") {
            None => Vec::new(),
            Some(v) => self
                .strings(v)
                .ok_or_else(|| self.err("ca", "must be a string or an array of strings"))?
                .into_iter()
                .map(|p| self.base.join(p))
                .collect(),
        };
        ep.client_certs = self.client()?;
        ep.headers = self.header()?;
        ep.dial_timeout = self.dial_timeout()?;
        Ok(())
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.t
            .get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.err(key, "must be a boolean"))
            })
            .transpose()
    }

    /// A string, or an array of strings.
    fn strings<'v>(&self, v: &'v toml::Value) -> Option<Vec<&'v str>> {
        match v {
            toml::Value::String(s) => Some(vec![s]),
            toml::Value::Array(a) => a.iter().map(|v| v.as_str()).collect(),
            _ => None,
        }
    }

    fn capabilities(&self) -> Result<Capabilities, String> {
        let Some(caps) = self.t.get("capabilities") else {
            return Ok(Capabilities {
                pull: true,
                resolve: true,
            });
        };
        let caps = caps
            .as_array()
            .ok_or_else(|| self.err("capabilities", "must be an array"))?;
        let mut out = Capabilities {
            pull: false,
            resolve: false,
        };
        for c in caps {
            match c.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("pull") => out.pull = true,
                Some("resolve") => out.resolve = true,
                Some("push") => {}
                _ => return Err(self.err("capabilities", &format!("unknown capability {c}"))),
            }
        }
        Ok(out)
    }

    /// `client`: a path (certificate and key in one PEM file), an array of
    /// such paths, or an array of `[cert, key]` pairs (an empty key: in the
    /// certificate's file), in any mix, as containerd takes it.
    fn client(&self) -> Result<Vec<ClientCert>, String> {
        let bad = || {
            self.err(
                "client",
                "must be a path, an array of paths, or an array of [cert, key] path pairs",
            )
        };
        let one = |p: &str| ClientCert {
            cert: self.base.join(p),
            key: None,
        };
        match self.t.get("client") {
            None => Ok(Vec::new()),
            Some(toml::Value::String(s)) if !s.is_empty() => Ok(vec![one(s)]),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) if !s.is_empty() => Ok(one(s)),
                    toml::Value::Array(pair) => match pair.as_slice() {
                        [toml::Value::String(cert), toml::Value::String(key)]
                            if !cert.is_empty() =>
                        {
                            Ok(ClientCert {
                                cert: self.base.join(cert),
                                key: (!key.is_empty()).then(|| self.base.join(key)),
                            })
                        }
                        _ => Err(bad()),
                    },
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    /// `[header]`: name = "value" or name = ["value", ...].
    fn header(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        let Some(v) = self.t.get("header") else {
            return Ok(BTreeMap::new());
        };
        let table = v
            .as_table()
            .ok_or_else(|| self.err("header", "must be a table of header names"))?;
        let mut out = BTreeMap::new();
        for (name, value) in table {
            if !is_token(name) {
                return Err(self.err("header", &format!("{name:?} is not a valid header name")));
            }
            let values: Vec<String> = self
                .strings(value)
                .ok_or_else(|| {
                    self.err(
                        "header",
                        &format!("{name:?} must be a string or an array of strings"),
                    )
                })?
                .into_iter()
                .map(str::to_string)
                .collect();
            if let Some(bad) = values.iter().find(|v| !is_header_value(v)) {
                return Err(self.err(
                    "header",
                    &format!("{name:?} has a value with control characters: {bad:?}"),
                ));
            }
            out.insert(name.clone(), values);
        }
        Ok(out)
    }

    fn dial_timeout(&self) -> Result<Option<Duration>, String> {
        let Some(v) = self.t.get("dial_timeout") else {
            return Ok(None);
        };
        let s = v.as_str().ok_or_else(|| {
            self.err(
                "dial_timeout",
                "must be a duration string such as \"5s\" or \"500ms\"",
            )
        })?;
        go_duration(s)
            .map(Some)
            .map_err(|e| self.err("dial_timeout", &format!("{s:?}: {e}")))
    }
}

/// `scheme://host[/path]` → its parts; no scheme means HTTPS, as in
/// containerd. The path comes back cleaned (`.`, `..` and empty segments
/// resolved), `""` when there is none.
fn split_url(url: &str) -> Result<(Scheme, String, String), String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if url.contains("://") {
        return Err(format!(
            "{url:?}: endpoint must start with http:// or https://"
        ));
    } else {
        (Scheme::Https, url)
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{url:?}: a query or fragment in an endpoint is not supported"
        ));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let mut segments: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let path = segments.iter().map(|s| format!("/{s}")).collect();
    Ok((scheme, host.to_string(), path))
}

/// The API root for a cleaned URL path, as containerd computes it: `/v2`
/// is appended unless the path already ends in it or `override_path` says
/// the path is the root itself.
fn api_root(path: &str, override_path: bool) -> String {
    if override_path || path.ends_with("/v2") {
        path.to_string()
    } else {
        format!("{path}/v2")
    }
}

/// An HTTP header name (RFC 9110 token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP header value: no control characters but tab (a CR or LF would
/// start another header).
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A Go `time.ParseDuration` string (`"5s"`, `"500ms"`, `"1m30s"`,
/// `"1.5s"`, `"0"`); negative durations are refused.
pub(super) fn go_duration(s: &str) -> Result<Duration, String> {
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err("must not be negative".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("is empty".into());
    }
    let bad = || "is not a duration (a number and a unit: ns, us, ms, s, m or h)".to_string();
    let mut nanos: u128 = 0;
    let mut rest = rest;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(bad)?;
        // The fraction, to the nanosecond (Go rounds the same way, down).
        let mut unit_frac = scale;
        for d in frac.bytes().take(30) {
            unit_frac /= 10;
            part += u128::from(d - b'0') * unit_frac;
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| "is too long".to_string())
}
