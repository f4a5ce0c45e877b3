# Shared by scripts/test.sh and scripts/example.sh; source it, do not run it.

# Exit with a clear message unless running as root.
require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "$(basename "$0"): must run as root (containers need namespaces and mounts)." >&2
        echo "Try: sudo $0" >&2
        exit 1
    fi
}

# Make sure `cargo` is on PATH. Under `sudo`, PATH is reset to secure_path and
# HOME to /root, so a toolchain installed with rustup by the invoking user is
# not found; fall back to root's and then that user's ~/.cargo/bin.
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0

    local dir
    dir="${CARGO_HOME:-$HOME/.cargo}/bin"
    if [[ -x "$dir/cargo" ]]; then
        export PATH="$dir:$PATH"
        return 0
    fi

    if [[ -n "${SUDO_USER:-}" && "$SUDO_USER" != root ]]; then
        local home
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [[ -n "$home" && -x "$home/.cargo/bin/cargo" ]]; then
            export PATH="$home/.cargo/bin:$PATH"
            # rustup's proxies find their toolchains through RUSTUP_HOME.
            if [[ -z "${RUSTUP_HOME:-}" && -d "$home/.rustup" ]]; then
                export RUSTUP_HOME="$home/.rustup"
            fi
            echo "$(basename "$0"): using $SUDO_USER's toolchain in $home/.cargo/bin"
            return 0
        fi
    fi

    echo "$(basename "$0"): cargo not found. Install a Rust toolchain (https://rustup.rs)," >&2
    echo "or keep your PATH through sudo: sudo env \"PATH=\$PATH\" $0" >&2
    exit 1
}
