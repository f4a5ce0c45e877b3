//! The stop signal, from the image's `StopSignal`.

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::{invalid, SpecError};

const FIELD: &str = "image.config.StopSignal";

/// The real-time signal range as the C library numbers it (glibc keeps 32
/// and 33 for itself), which is what Docker's and containerd's signal
/// tables (moby `signal.SignalMap`) use for `RTMIN`, `RTMIN+n`, `RTMAX-n`.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

fn realtime(name: &str) -> Option<i32> {
    let offset = |s: &str| {
        if s.is_empty() {
            Some(0)
        } else {
            s.parse::<i32>().ok()
        }
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        SIGRTMIN + offset(rest.strip_prefix('+').unwrap_or(rest))?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        SIGRTMAX - offset(rest.strip_prefix('-').unwrap_or(rest))?
    } else {
        return None;
    };
    (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
}

/// The image's `StopSignal` as a number: a name with or without `SIG`, in
/// any case (`SIGQUIT`, `quit`), `RTMIN+n`/`RTMAX-n`, or a number 1-64;
/// `SIGTERM` when unset. Anything else is refused, naming the image field.
///
/// (CRI's newer `ContainerConfig.stop_signal` is not in the vendored
/// `api.proto` yet.)
pub(super) fn stop_signal(image: &str) -> Result<i32, SpecError> {
    let s = image.trim();
    if s.is_empty() {
        return Ok(Signal::SIGTERM as i32);
    }
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(invalid(FIELD, format!("{n} is not a signal number (1-64)")))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(n) = realtime(name) {
        return Ok(n);
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| invalid(FIELD, format!("unknown signal {image:?}")))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn signal_of(f: &Fixture) -> i32 {
        f.spec().stop_signal
    }

    #[test]
    fn default_is_sigterm() {
        let f = Fixture::new();
        assert_eq!(signal_of(&f), 15);
    }

    #[test]
    fn name_with_sig() {
        let mut f = Fixture::new();
        f.image.stop_signal = "SIGQUIT".into();
        assert_eq!(signal_of(&f), 3);
    }

    #[test]
    fn name_without_sig_any_case() {
        let mut f = Fixture::new();
        f.image.stop_signal = "winch".into();
        assert_eq!(signal_of(&f), 28);
    }

    #[test]
    fn number() {
        let mut f = Fixture::new();
        f.image.stop_signal = "9".into();
        assert_eq!(signal_of(&f), 9);
    }

    #[test]
    fn realtime_offset() {
        let mut f = Fixture::new();
        f.image.stop_signal = "SIGRTMIN+3".into();
        assert_eq!(signal_of(&f), 37);
    }

    #[test]
    fn realtime_max() {
        let mut f = Fixture::new();
        f.image.stop_signal = "RTMAX-1".into();
        assert_eq!(signal_of(&f), 63);
    }

    #[test]
    fn unknown_name_is_invalid() {
        let mut f = Fixture::new();
        f.image.stop_signal = "SIGFOO".into();
        assert_eq!(f.err_field(), FIELD);
    }

    #[test]
    fn out_of_range_number_is_invalid() {
        let mut f = Fixture::new();
        f.image.stop_signal = "65".into();
        assert_eq!(f.err_field(), FIELD);
    }
}
