//! Network configuration files: finding the one in force and turning it
//! into a plugin list (a `.conf` is a list of one, as libcni does).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// A loaded network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The network's name.
    pub name: String,
    /// The list's `cniVersion`, given to every plugin.
    pub cni_version: String,
    /// `disableCheck`: CHECK is not run.
    pub disable_check: bool,
    /// `disableGC`: GC is not run.
    pub disable_gc: bool,
    /// The plugins' own objects, in order.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from (for messages).
    pub source: PathBuf,
}

/// `x.y.z` as numbers; an unparsable part counts as 0.
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

impl NetworkList {
    /// Parses a `.conflist` (or, with `single`, a `.conf`) document.
    pub fn parse(bytes: &[u8], single: bool, source: &Path) -> Result<NetworkList, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(mut top) = v else {
            return Err("not a JSON object".into());
        };
        let str_field = |top: &Map<String, Value>, k: &str| -> Result<String, String> {
            match top.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                None => Ok(String::new()),
                Some(_) => Err(format!("{k:?} must be a string")),
            }
        };
        let name = str_field(&top, "name")?;
        let cni_version = str_field(&top, "cniVersion")?;
        let bool_field = |top: &Map<String, Value>, k: &str| -> Result<bool, String> {
            match top.get(k) {
                Some(Value::Bool(b)) => Ok(*b),
                // libcni also takes the strings "true"/"false".
                Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
                None => Ok(false),
                Some(_) => Err(format!("{k:?} must be a boolean")),
            }
        };
        let disable_check = bool_field(&top, "disableCheck")?;
        let disable_gc = bool_field(&top, "disableGC")?;
        let plugins = if single {
            top.remove("name");
            top.remove("cniVersion");
            vec![top]
        } else {
            match top.remove("plugins") {
                Some(Value::Array(a)) => a
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| match p {
                        Value::Object(o) => Ok(o),
                        _ => Err(format!("plugins[{i}] must be an object")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => return Err("\"plugins\" must be an array".into()),
                None => return Err("no \"plugins\" (a .conflist needs them)".into()),
            }
        };
        let list = NetworkList {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            source: source.to_path_buf(),
        };
        list.validate()?;
        Ok(list)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("\"name\" must be set".into());
        }
        if self.cni_version.is_empty() {
            return Err("\"cniVersion\" must be set".into());
        }
        if self.plugins.is_empty() {
            return Err("\"plugins\" must not be empty".into());
        }
        for (i, p) in self.plugins.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if valid_type(t) => {}
                _ => {
                    return Err(format!(
                        "plugins[{i}].type must be a plugin name (letters, digits, . _ -)"
                    ))
                }
            }
        }
        Ok(())
    }

    /// The list as a `.conflist` document (what the result cache keeps, so
    /// DEL after a restart uses the configuration ADD used).
    pub fn to_conflist(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "disableGC": self.disable_gc,
            "plugins": self.plugins,
        })
    }

    /// Whether the list's version has `STATUS` and `GC` (CNI 1.1).
    pub fn has_status_and_gc(&self) -> bool {
        version_tuple(&self.cni_version) >= (1, 1, 0)
    }

    /// Whether the list's version has `CHECK` (CNI 0.4).
    pub fn has_check(&self) -> bool {
        version_tuple(&self.cni_version) >= (0, 4, 0)
    }
}

/// A plugin `type` is a file name in the plugin directories: nothing that
/// could walk out of them.
pub fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What loading the directory found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// The configuration in force.
    Ready(NetworkList),
    /// None usable; why (for `NetworkReady`'s message).
    NotReady(String),
}

/// Loads the first usable configuration in `dir`, in lexical order of file
/// names (`.conflist`, `.conf`, `.json`); files that do not parse are
/// skipped with a warning, as libcni's loaders do.
pub fn load_dir(dir: &Path) -> Loaded {
    try_load_dir(dir).unwrap_or_else(|e| {
        Loaded::NotReady(format!(
            "no network config: cannot read {}: {e}",
            dir.display()
        ))
    })
}

/// The daemon is out of file descriptors or memory: what a directory read
/// says then is about berth, not about the configuration.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

/// [`load_dir`], except that running out of file descriptors or memory
/// while reading is an error (the configuration in force should stay),
/// not "no configuration".
pub fn try_load_dir(dir: &Path) -> Result<Loaded, std::io::Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if transient(&e) => return Err(e),
        Err(e) => {
            return Ok(Loaded::NotReady(format!(
                "no network config: cannot read {}: {e}",
                dir.display()
            )))
        }
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ext = Path::new(&name).extension()?.to_str()?.to_string();
            matches!(ext.as_str(), "conflist" | "conf" | "json").then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    let mut skipped = Vec::new();
    for (name, path) in files {
        // Follows symlinks (CNI DaemonSets often link their file in), but
        // only regular files of a sane size are read.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= 1 << 20 => {}
            _ => continue,
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if transient(&e) => return Err(e),
            Err(e) => {
                skipped.push(format!("{name}: {e}"));
                continue;
            }
        };
        match NetworkList::parse(&bytes, !name.ends_with(".conflist"), &path) {
            Ok(list) => {
                for s in &skipped {
                    tracing::warn!(file = %s, "skipped an invalid CNI config");
                }
                return Ok(Loaded::Ready(list));
            }
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    Ok(if skipped.is_empty() {
        Loaded::NotReady(format!("no network config found in {}", dir.display()))
    } else {
        Loaded::NotReady(format!(
            "no valid network config in {}: {}",
            dir.display(),
            skipped.join("; ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"pods","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn first_valid_file_in_lexical_order_wins() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            matches!(load_dir(d.path()), Loaded::NotReady(m) if m.contains("no network config found"))
        );
        std::fs::write(d.path().join("20-pods.conflist"), LIST).unwrap();
        std::fs::write(
            d.path().join("10-old.conf"),
            r#"{"cniVersion":"0.4.0","name":"old","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(d.path().join("01-readme.txt"), "not a config").unwrap();
        let Loaded::Ready(l) = load_dir(d.path()) else {
            panic!("not loaded")
        };
        // The broken file is skipped; the .conf is a list of one.
        assert_eq!(l.name, "old");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0]["type"], "bridge");
        assert!(!l.plugins[0].contains_key("name"));
        std::fs::remove_file(d.path().join("10-old.conf")).unwrap();
        let Loaded::Ready(l) = load_dir(d.path()) else {
            panic!("not loaded")
        };
        assert_eq!((l.name.as_str(), l.plugins.len()), ("pods", 2));
        assert!(l.has_check() && !l.has_status_and_gc());
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let p = Path::new("x.conflist");
        let err = |s: &str| NetworkList::parse(s.as_bytes(), false, p).unwrap_err();
        assert!(err(r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#).contains("name"));
        assert!(err(r#"{"name":"n","plugins":[{"type":"x"}]}"#).contains("cniVersion"));
        assert!(err(r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#).contains("empty"));
        assert!(
            err(r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../../bin/sh"}]}"#)
                .contains("plugins[0].type")
        );
        assert!(err(r#"{"name":"n","cniVersion":"1.0.0"}"#).contains("plugins"));
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.conflist"), r#"{"name":"n"}"#).unwrap();
        assert!(matches!(load_dir(d.path()), Loaded::NotReady(m) if m.contains("a.conflist")));
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_tuple("1.1.0") > version_tuple("1.0.10"));
        assert!(version_tuple("0.10.0") > version_tuple("0.4.0"));
        assert_eq!(version_tuple("junk"), (0, 0, 0));
    }
}
