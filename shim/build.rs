//! Link flags for the berth binary.

use std::path::Path;

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Packed relative relocations (DT_RELR, glibc 2.36 and binutils
        // 2.38 or lld): a position-independent binary's ~28,000
        // R_X86_64_RELATIVE entries take 660 KiB of `.rela.dyn` that the
        // loader reads at every start, resident in the daemon and in every
        // process berth execs; packed they take a few KiB. The glibc it
        // needs is what the chart's node requirements already ask for (the
        // build machine's, Debian 12's 2.36).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The daemon's functions first in .text (symbol-order.txt says why).
    // Only LLD takes the flag: rustc links this target with its own LLD
    // since 1.90 unless told otherwise; with another linker the binary is
    // the same, its functions in the default order.
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if links_with_lld() && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
}

/// Whether rustc links with its bundled LLD: the default for
/// x86_64-unknown-linux-gnu from Rust 1.90, unless the flags pick the
/// linker flavour or its self-contained copy themselves.
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let overridden = [
        "linker-features",
        "link-self-contained",
        "linker-flavor",
        "fuse-ld",
    ]
    .iter()
    .any(|f| flags.contains(f));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            // "rustc 1.95.0 (59807616e 2026-04-14)"
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let version = text.split_whitespace().nth(1)?.to_string();
            let mut parts = version.split('.');
            (parts.next()? == "1").then_some(())?;
            parts.next()?.parse::<u32>().ok()
        })
        .unwrap_or(0);
    target == "x86_64-unknown-linux-gnu" && minor >= 90 && !overridden
}
