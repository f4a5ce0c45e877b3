//! Small helpers every part of the monitor uses (its loop, its task server,
//! its start-up, the zygote): kept apart so that those parts depend on this
//! and not on each other.

use std::os::fd::OwnedFd;

use super::MonitorError;

/// A line on the monitor's stderr (`monitor.log`).
pub(super) fn warn(msg: &str) {
    let now = crate::logs::rfc3339_nano(std::time::SystemTime::now());
    eprintln!("{now} berth-monitor[{}]: {msg}", std::process::id());
}

/// Makes one of the container's output fds non-blocking.
pub(super) fn set_nonblocking(fd: &OwnedFd) -> Result<(), MonitorError> {
    crate::util::set_nonblocking(std::os::fd::AsFd::as_fd(fd)).map_err(|source| MonitorError::Sys {
        step: "make a pipe non-blocking",
        source,
    })
}

/// The monitor's tracing subscriber: warnings and errors of the runtime
/// core (a failed `poststart` or `poststop` hook) become [`warn`] lines in
/// `monitor.log`; nothing else is recorded. Installed once per process.
pub(super) fn log_core_warnings() {
    let _ = tracing::subscriber::set_global_default(WarnLines);
}

struct WarnLines;

/// Collects an event's fields as `message key=value ...`.
#[derive(Default)]
struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = match field.name() {
            "message" => write!(self.0, "{value:?}"),
            name => write!(self.0, "{name}={value:?}"),
        };
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

impl tracing::Subscriber for WarnLines {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::WARN
    }

    // Lets every info/debug/trace callsite in the monitor be skipped by its
    // level check alone, as with no subscriber at all.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }

    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.enabled(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        warn(&line.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
