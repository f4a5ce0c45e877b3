//! A CNI plugin for tests that fails on demand, to prove berth's rollback
//! and retry paths with a real chain. Chained after real plugins, it passes
//! `prevResult` through on ADD (as a chained plugin must) and succeeds on
//! DEL, CHECK, STATUS and GC — unless a file named in its config exists:
//!
//!   {"type": "berth-test-fail", "failAddIf": "/tmp/x/fail-add",
//!    "failDelIf": "/tmp/x/fail-del", "log": "/tmp/x/calls"}
//!
//! `failStatusIf` does the same for STATUS. Each call appends
//! `<CNI_COMMAND> <CNI_CONTAINERID> <runtimeConfig> <valid-attachments>`
//! to `log` when given.

use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut input);
    let conf: serde_json::Value = serde_json::from_slice(&input).unwrap_or_default();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let field = |k: &str| conf.get(k).and_then(|v| v.as_str()).map(str::to_string);
    if let Some(log) = field("log") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let id = std::env::var("CNI_CONTAINERID").unwrap_or_default();
            let rc = conf.get("runtimeConfig").cloned().unwrap_or_default();
            let valid = conf
                .get("cni.dev/valid-attachments")
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(f, "{command} {id} {rc} {valid}");
        }
    }
    let version = field("cniVersion").unwrap_or_else(|| "1.0.0".into());
    let fail_flag = match command.as_str() {
        "ADD" => field("failAddIf"),
        "DEL" => field("failDelIf"),
        "STATUS" => field("failStatusIf"),
        _ => None,
    };
    if fail_flag.is_some_and(|f| std::path::Path::new(&f).exists()) {
        let err = serde_json::json!({
            "cniVersion": version,
            "code": 999,
            "msg": format!("berth-test-fail: {command} fails on demand"),
            "details": "the flag file exists",
        });
        println!("{err}");
        std::process::exit(1);
    }
    match command.as_str() {
        "ADD" => {
            let prev = conf
                .get("prevResult")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({ "cniVersion": version }));
            println!("{prev}");
        }
        "VERSION" => println!(
            "{}",
            serde_json::json!({"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        ),
        _ => {}
    }
}
