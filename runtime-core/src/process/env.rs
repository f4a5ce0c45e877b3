//! The environment of a process as the kernel takes it: `NAME=value` byte
//! strings, any bytes but NUL. CRI's `KeyValue.value` is `bytes`, so a
//! value that is not UTF-8 must reach the container byte-exact.
//!
//! Serialized (monitor specs on disk, the init's bootstrap message) as a
//! JSON string when the entry is UTF-8 — the format written before
//! non-UTF-8 values were possible, so older specs still read — and as an
//! array of bytes otherwise.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Text(String),
    Bytes(Vec<u8>),
}

/// `#[serde(with = "...")]` for `Vec<OsString>`.
pub fn serialize<S: Serializer>(env: &[OsString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(env.iter().map(|e| match e.to_str() {
        Some(t) => Entry::Text(t.to_owned()),
        None => Entry::Bytes(e.as_bytes().to_vec()),
    }))
}

/// `#[serde(with = "...")]` for `Vec<OsString>`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::Text(t) => OsString::from(t),
            Entry::Bytes(b) => OsString::from_vec(b),
        })
        .collect())
}

/// The name of a `NAME=value` entry (all of it when there is no `=`).
pub fn name(entry: &OsStr) -> &[u8] {
    let b = entry.as_bytes();
    b.split(|&c| c == b'=').next().unwrap_or(b)
}

/// The value of `name` in `env`, if set.
pub fn get<'a>(env: &'a [OsString], name: &str) -> Option<&'a [u8]> {
    env.iter().find_map(|e| {
        e.as_bytes()
            .strip_prefix(name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct P {
        #[serde(with = "super")]
        env: Vec<OsString>,
    }

    #[test]
    fn utf8_entries_stay_strings_and_others_round_trip_as_bytes() {
        let p = P {
            env: vec![
                OsString::from("A=b"),
                OsString::from_vec(b"RAW=\xff\xfe ok".to_vec()),
            ],
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"env":["A=b",[82,65,87,61,255,254,32,111,107]]}"#);
        assert_eq!(serde_json::from_str::<P>(&json).unwrap(), p);
        // What earlier versions wrote still reads.
        let old: P = serde_json::from_str(r#"{"env":["PATH=/bin","X=1"]}"#).unwrap();
        assert_eq!(old.env, vec![OsString::from("PATH=/bin"), "X=1".into()]);
    }

    #[test]
    fn names_and_values() {
        let env = vec![OsString::from("PATH=/bin:/x"), OsString::from("EMPTY=")];
        assert_eq!(get(&env, "PATH"), Some(&b"/bin:/x"[..]));
        assert_eq!(get(&env, "EMPTY"), Some(&b""[..]));
        assert_eq!(get(&env, "PAT"), None);
        assert_eq!(name(OsStr::new("A=b=c")), b"A");
        assert_eq!(name(OsStr::new("NOEQ")), b"NOEQ");
    }
}
