//! Link flags for the berth binary.

fn main() {
    // Packed relative relocations (DT_RELR, glibc 2.36 and binutils 2.38):
    // a position-independent binary's ~28,000 R_X86_64_RELATIVE entries
    // take 660 KiB of `.rela.dyn` that the loader reads at every start,
    // resident in the daemon and in every process berth execs; packed they
    // take a few KiB. The glibc it needs is what the chart's node
    // requirements already ask for (the build machine's, Debian 12's 2.36).
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
