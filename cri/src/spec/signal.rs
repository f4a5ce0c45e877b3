//! The stop signal, from CRI's `stop_signal` or the image's `StopSignal`.

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

/// The stop signal: CRI's `ContainerConfig.stop_signal` (kubelet 1.33+,
/// from the pod spec's `lifecycle.stopSignal`) when set, else the image's
/// `StopSignal`, else `SIGTERM`.
pub(super) fn stop_signal(requested: i32, image: &str) -> Result<i32, SpecError> {
    if requested == 0 {
        return image_signal(FIELD, image);
    }
    let field = "config.stop_signal";
    let name = crate::proto::Signal::try_from(requested)
        .map_err(|_| invalid(field, format!("{requested} is not a CRI Signal value")))?
        .as_str_name();
    // `SIGNAL_SIGRTMINPLUS3` → `RTMIN+3`; the aliases the kernel numbers
    // the same as another signal are named by that one.
    let name = name.strip_prefix("SIGNAL_SIG").unwrap_or(name);
    let name = match name {
        "CLD" => "CHLD".to_string(),
        "POLL" => "IO".to_string(),
        "IOT" => "ABRT".to_string(),
        n => n.replace("MINPLUS", "MIN+").replace("MAXMINUS", "MAX-"),
    };
    image_signal(field, &name)
}

/// CRI's `Signal` value for signal number `n` (the canonical name where the
/// kernel has aliases); 0 (runtime default) for a number CRI cannot name.
pub fn to_cri(n: i32) -> i32 {
    (1..=65)
        .find(|v| stop_signal(*v, "").ok() == Some(n))
        .unwrap_or(0)
}

/// A signal as images write it: a name with or without `SIG`, in any case
/// (`SIGQUIT`, `quit`), `RTMIN+n`/`RTMAX-n`, or a number 1-64; `SIGTERM`
/// when empty. Anything else is refused, naming `field`.
fn image_signal(field: &str, image: &str) -> Result<i32, SpecError> {
    let s = image.trim();
    if s.is_empty() {
        return Ok(Signal::SIGTERM as i32);
    }
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(invalid(field, format!("{n} is not a signal number (1-64)")))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(n) = realtime(name) {
        return Ok(n);
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| invalid(field, format!("unknown signal {image:?}")))
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

    #[test]
    fn cri_stop_signal_overrides_the_image() {
        use crate::proto::Signal as S;
        assert_eq!(stop_signal(S::Sigquit as i32, "SIGUSR1").unwrap(), 3);
        assert_eq!(stop_signal(S::Sigterm as i32, "").unwrap(), 15);
        assert_eq!(stop_signal(S::Sigrtminplus3 as i32, "").unwrap(), 37);
        assert_eq!(stop_signal(S::Sigrtmaxminus1 as i32, "").unwrap(), 63);
        assert_eq!(stop_signal(S::Sigrtmax as i32, "").unwrap(), 64);
        assert_eq!(stop_signal(S::Sigcld as i32, "").unwrap(), 17);
        assert_eq!(stop_signal(S::Sigpoll as i32, "").unwrap(), 29);
        assert_eq!(stop_signal(S::Sigiot as i32, "").unwrap(), 6);
        assert_eq!(stop_signal(0, "SIGUSR1").unwrap(), 10, "unset: the image's");
        let e = stop_signal(999, "").unwrap_err();
        assert!(e.to_string().contains("config.stop_signal"), "{e}");
        assert_eq!(to_cri(15), S::Sigterm as i32);
        assert_eq!(to_cri(6), S::Sigabrt as i32, "not the SIGIOT alias");
        assert_eq!(to_cri(37), S::Sigrtminplus3 as i32);
        assert_eq!(to_cri(0), 0);
        // Every CRI value maps to a signal.
        for v in 1..=65 {
            assert!(stop_signal(v, "").is_ok(), "CRI signal {v}");
        }
    }
}
