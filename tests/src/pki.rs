//! Certificates for TLS tests, made with the `openssl` command at test time:
//! a CA, a server certificate for `127.0.0.1` and a client certificate, all
//! signed by the CA (P-256 keys, valid for a day).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// The files, in a temporary directory that goes away with the value.
pub struct TestPki {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate, `subjectAltName = IP:127.0.0.1`.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// The client certificate (`extendedKeyUsage = clientAuth`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    _dir: TempDir,
}

impl TestPki {
    /// Makes all of them. `NotFound` when `openssl` is not installed.
    pub fn generate() -> io::Result<TestPki> {
        let dir = tempfile::Builder::new().prefix("berth-pki").tempdir()?;
        let d = dir.path();
        let ca_key = d.join("ca.key");
        let ca = d.join("ca.pem");
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                s(&ca_key),
                "-out",
                s(&ca),
                "-days",
                "1",
                "-subj",
                "/CN=berth test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        let (server_cert, server_key) = leaf(
            d,
            &ca,
            &ca_key,
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        let (client_cert, client_key) =
            leaf(d, &ca, &ca_key, "client", "extendedKeyUsage=clientAuth\n")?;
        Ok(TestPki {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
            _dir: dir,
        })
    }
}

/// A key and a certificate signed by the CA, with the extensions `ext`.
fn leaf(
    dir: &Path,
    ca: &Path,
    ca_key: &Path,
    name: &str,
    ext: &str,
) -> io::Result<(PathBuf, PathBuf)> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext_file = dir.join(format!("{name}.ext"));
    std::fs::write(&ext_file, ext)?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            &format!("/CN=berth test {name}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(ca),
            "-CAkey",
            s(ca_key),
            "-CAcreateserial",
            "-out",
            s(&cert),
            "-days",
            "1",
            "-extfile",
            s(&ext_file),
        ],
    )?;
    Ok((cert, key))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("openssl: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
