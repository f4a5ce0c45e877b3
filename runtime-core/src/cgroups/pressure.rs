//! Pressure stall information (PSI) of a cgroup v2: `cpu.pressure`,
//! `memory.pressure` and `io.pressure`
//! (<https://docs.kernel.org/accounting/psi.html>).
//!
//! Each file has a `some` line (time at least one task of the cgroup was
//! stalled on the resource) and, for memory and I/O — and for CPU since
//! Linux 5.13 — a `full` line (time all its non-idle tasks were):
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! cgroup v1 has no such files; nor does a kernel built without
//! `CONFIG_PSI`, and one booted with `psi=0` refuses to read them
//! (`EOPNOTSUPP`). The figures are then `None`, never zeros: no pressure
//! known is not the same as none measured.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiData {
    /// Cumulative stall time in microseconds (the kernel's unit; CRI wants
    /// nanoseconds, converted where the CRI message is built).
    pub total_us: u64,
    /// Share of wall time stalled over the last 10 s, in percent (0–100).
    pub avg10: f64,
    /// ... over the last 60 s.
    pub avg60: f64,
    /// ... over the last 300 s.
    pub avg300: f64,
}

/// The pressure of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    /// The `some` line: at least one task stalled.
    pub some: PsiData,
    /// The `full` line: every non-idle task stalled at once (`None` where
    /// the kernel has none: CPU before Linux 5.13).
    pub full: Option<PsiData>,
}

/// Why a pressure file did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PressureError {
    /// There is no `some` line (every pressure file has one).
    #[error("no \"some\" line")]
    NoSome,
    /// A line lacks a field, or a value is not a number in range.
    #[error("malformed pressure line {0:?}")]
    BadLine(String),
}

/// Parses the content of a `*.pressure` file (pure). Lines of a kind other
/// than `some` and `full`, and fields other than `avg10`, `avg60`,
/// `avg300` and `total`, are ignored, so a later kernel adding some does
/// not break it.
pub fn parse_pressure(text: &str) -> Result<Psi, PressureError> {
    let (mut some, mut full) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let bad = || PressureError::BadLine(line.to_string());
        let (kind, fields) = line.split_once(' ').ok_or_else(bad)?;
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            _ => continue,
        };
        *slot = Some(parse_line(fields).ok_or_else(bad)?);
    }
    Ok(Psi {
        some: some.ok_or(PressureError::NoSome)?,
        full,
    })
}

/// `avg10=0.12 avg60=0.05 avg300=0.01 total=5371`.
fn parse_line(fields: &str) -> Option<PsiData> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for kv in fields.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "avg10" => avg10 = Some(percent(v)?),
            "avg60" => avg60 = Some(percent(v)?),
            "avg300" => avg300 = Some(percent(v)?),
            "total" => total = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some(PsiData {
        total_us: total?,
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
    })
}

/// A share in percent: finite and within 0–100 (`f64::from_str` would
/// also take `nan` and `inf`).
fn percent(v: &str) -> Option<f64> {
    v.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
}

/// Reads and parses a pressure file; `None` when there is none, it cannot
/// be read (PSI disabled) or it does not parse — a stats call must not fail
/// for one missing figure.
pub(super) fn read_pressure(path: &Path) -> Option<Psi> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_pressure(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpu.pressure` of a busy cgroup v2 on Linux 6.x (the `full` line of
    /// CPU is all zeros at the root, but present).
    const CPU: &str = "some avg10=86.69 avg60=89.87 avg300=75.83 total=2540865872\n\
                       full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    /// `io.pressure` from the same machine.
    const IO: &str = "some avg10=14.97 avg60=10.06 avg300=7.89 total=355200895\n\
                      full avg10=0.00 avg60=0.00 avg300=1.57 total=139211831\n";
    /// `cpu.pressure` before Linux 5.13: no `full` line.
    const CPU_OLD: &str = "some avg10=0.12 avg60=0.05 avg300=0.01 total=5371\n";

    #[test]
    fn some_and_full_lines() {
        let p = parse_pressure(CPU).unwrap();
        assert_eq!(
            p.some,
            PsiData {
                total_us: 2_540_865_872,
                avg10: 86.69,
                avg60: 89.87,
                avg300: 75.83,
            }
        );
        assert_eq!(p.full, Some(PsiData::default()));
        let p = parse_pressure(IO).unwrap();
        assert_eq!(p.some.total_us, 355_200_895);
        let full = p.full.unwrap();
        assert_eq!((full.total_us, full.avg300), (139_211_831, 1.57));
    }

    #[test]
    fn cpu_without_a_full_line() {
        let p = parse_pressure(CPU_OLD).unwrap();
        assert_eq!(p.some.total_us, 5371);
        assert_eq!(p.some.avg10, 0.12);
        assert_eq!(p.full, None);
    }

    #[test]
    fn unknown_lines_and_fields_are_ignored() {
        let text = "some avg10=1.00 avg60=2.00 avg300=3.00 total=4 avg900=5.00\n\
                    partial avg10=9.00\n\nfull avg10=0.50 avg60=0.25 avg300=0.00 total=1\n";
        let p = parse_pressure(text).unwrap();
        assert_eq!(p.some.avg300, 3.0);
        assert_eq!(p.full.unwrap().total_us, 1);
    }

    #[test]
    fn malformed_content_is_an_error() {
        assert_eq!(parse_pressure(""), Err(PressureError::NoSome));
        assert_eq!(
            parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            Err(PressureError::NoSome)
        );
        for bad in [
            "some avg10=0.00 avg60=0.00 total=0",              // no avg300
            "some avg10=0.00 avg60=0.00 avg300=0.00",          // no total
            "some avg10=x avg60=0.00 avg300=0.00 total=0",     // not a number
            "some avg10=nan avg60=0.00 avg300=0.00 total=0",   // not finite
            "some avg10=100.5 avg60=0 avg300=0 total=0",       // over 100 %
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=-1", // negative
            "some",
        ] {
            assert!(
                matches!(parse_pressure(bad), Err(PressureError::BadLine(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reading_a_missing_or_broken_file_is_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_pressure(&t.path().join("cpu.pressure")), None);
        std::fs::write(t.path().join("io.pressure"), "garbage\n").unwrap();
        assert_eq!(read_pressure(&t.path().join("io.pressure")), None);
        std::fs::write(t.path().join("memory.pressure"), IO).unwrap();
        assert_eq!(
            read_pressure(&t.path().join("memory.pressure")),
            parse_pressure(IO).ok()
        );
    }
}
