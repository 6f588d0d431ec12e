//! Structured logs with levels, to stderr or to a file/FIFO configured by `PUT /logger` (or
//! the config file's `logger`).
//!
//! A line is `<UTC time> [<instance id>:<thread>:<LEVEL>:<file>:<line>] <message>`
//! (Firecracker's shape); the level and origin parts appear only when `show_level` /
//! `show_log_origin` are set. Lines
//! below the configured level cost one relaxed atomic load. A configured destination is
//! opened `O_APPEND | O_NONBLOCK`, and each line is written with a single `write`: a write
//! that would block (a full FIFO) drops the line and counts it in
//! `logger.missed_log_count`, so logging never stalls a vCPU thread. Before configuration,
//! lines go to stderr at level `Info`.
//!
//! Use the macros: `crate::log_info!("... {x}")`, `log_error!`, `log_warn!`, `log_debug!`,
//! `log_trace!`.

use crate::metrics::METRICS;
use crate::output::open_output;
use crate::resources::{LogLevel, LoggerConfig};
use crate::sync;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("logger: cannot open log_path {path:?}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// The level of one log line (a [`LogLevel`] without `Off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

fn filter_value(level: LogLevel) -> u8 {
    match level {
        LogLevel::Off => 0,
        LogLevel::Error => 1,
        LogLevel::Warning => 2,
        LogLevel::Info => 3,
        LogLevel::Debug => 4,
        LogLevel::Trace => 5,
    }
}

/// The level before any configuration, and of a configuration that names none
/// (Firecracker's default).
pub const DEFAULT_LEVEL: LogLevel = LogLevel::Info;

/// The most verbose level written; `Info` until configured (as Firecracker).
static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

struct Sink {
    /// `None`: stderr.
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
    /// Only lines from module paths starting with this are written.
    module: Option<String>,
    instance_id: String,
}

static SINK: RwLock<Sink> = RwLock::new(Sink {
    file: None,
    show_level: false,
    show_origin: false,
    module: None,
    instance_id: String::new(),
});

/// Names the instance in every line (`--id`); `anonymous-instance` by default.
pub fn set_instance_id(id: &str) {
    let mut sink = sync::write(&SINK);
    sink.instance_id = id.to_string();
}

/// Applies a validated [`LoggerConfig`]: the level given, or [`DEFAULT_LEVEL`] when none is
/// (Firecracker's rule); the other fields given change, the others keep their value.
pub fn configure(cfg: &LoggerConfig) -> Result<(), LoggerError> {
    let file = match &cfg.log_path {
        Some(path) => Some(open_output(path).map_err(|source| LoggerError::Open {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let mut sink = sync::write(&SINK);
    if file.is_some() {
        sink.file = file;
    }
    if let Some(v) = cfg.show_level {
        sink.show_level = v;
    }
    if let Some(v) = cfg.show_log_origin {
        sink.show_origin = v;
    }
    if cfg.module.is_some() {
        sink.module = cfg.module.clone();
    }
    // As in Firecracker, a configuration without a level sets the default one.
    let level = cfg.level.unwrap_or(DEFAULT_LEVEL);
    MAX_LEVEL.store(filter_value(level), Ordering::Relaxed);
    Ok(())
}

/// True when a line at `level` would be written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line (use the macros). Never blocks: a busy or full destination drops the line.
pub fn log(level: Level, module: &str, file: &str, line: u32, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    // A reader lock is only contended while the logger is being reconfigured (pre-boot,
    // from the VMM thread); never wait for it.
    let Ok(sink) = SINK.try_read() else {
        METRICS.logger.missed_log_count.inc();
        return;
    };
    if let Some(prefix) = &sink.module {
        if !module.starts_with(prefix.as_str()) {
            return;
        }
    }
    let text = format_line(&sink, level, file, line, args);
    let result = match &sink.file {
        Some(f) => {
            let mut f: &File = f;
            f.write(text.as_bytes())
        }
        None => std::io::stderr().lock().write(text.as_bytes()),
    };
    match result {
        Ok(n) if n == text.len() => {}
        Ok(_) => METRICS.logger.missed_log_count.inc(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            METRICS.logger.missed_log_count.inc()
        }
        Err(_) => METRICS.logger.log_fails.inc(),
    }
}

fn format_line(
    sink: &Sink,
    level: Level,
    file: &str,
    line: u32,
    args: std::fmt::Arguments<'_>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(128);
    let id = if sink.instance_id.is_empty() {
        crate::resources::DEFAULT_INSTANCE_ID
    } else {
        sink.instance_id.as_str()
    };
    let thread = std::thread::current();
    // Firecracker's prefix: `[id:thread]`, `[id:thread:LEVEL]`, `[id:thread:LEVEL:file:line]`.
    let _ = write!(
        out,
        "{} [{}:{}",
        utc_now(),
        id,
        thread.name().unwrap_or("-")
    );
    if sink.show_level {
        let _ = write!(out, ":{}", level.name());
    }
    if sink.show_origin {
        let _ = write!(out, ":{file}:{line}");
    }
    out.push_str("] ");
    let _ = out.write_fmt(args);
    out.push('\n');
    out
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
pub fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_micros())
}

fn format_utc(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (the "days from civil" algorithm run
/// backwards, on 400-year eras of 146097 days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {
        if $crate::logger::enabled($level) {
            $crate::logger::log($level, module_path!(), file!(), line!(), format_args!($($arg)+));
        }
    };
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => { $crate::log_at!($crate::logger::Level::Error, $($arg)+) };
}

#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => { $crate::log_at!($crate::logger::Level::Warn, $($arg)+) };
}

#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => { $crate::log_at!($crate::logger::Level::Info, $($arg)+) };
}

#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => { $crate::log_at!($crate::logger::Level::Debug, $($arg)+) };
}

#[macro_export]
macro_rules! log_trace {
    ($($arg:tt)+) => { $crate::log_at!($crate::logger::Level::Trace, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            format_utc(1_700_000_000, 123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(format_utc(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn line_prefixes_follow_the_flags() {
        let mut sink = Sink {
            file: None,
            show_level: false,
            show_origin: false,
            module: None,
            instance_id: "vm1".into(),
        };
        let plain = format_line(&sink, Level::Info, "a.rs", 7, format_args!("hello {}", 1));
        assert!(plain.ends_with("] hello 1\n"), "{plain}");
        assert!(plain.contains(" [vm1:"), "{plain}");
        assert!(!plain.contains("INFO"));
        sink.show_level = true;
        sink.show_origin = true;
        let full = format_line(&sink, Level::Warn, "a.rs", 7, format_args!("x"));
        assert!(full.contains(" [vm1:"), "{full}");
        assert!(full.ends_with(":WARN:a.rs:7] x\n"), "{full}");
        sink.show_origin = false;
        let level_only = format_line(&sink, Level::Error, "a.rs", 7, format_args!("y"));
        assert!(level_only.ends_with(":ERROR] y\n"), "{level_only}");
    }

    #[test]
    fn configured_file_receives_lines_at_or_above_the_level() {
        let dir = std::env::temp_dir().join(format!("kiln-logger-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let cfg = LoggerConfig {
            log_path: Some(path.to_string_lossy().into_owned()),
            level: Some(LogLevel::Debug),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: None,
        };
        configure(&cfg).unwrap();
        crate::log_debug!("debug line {}", 42);
        crate::log_trace!("trace line");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(":DEBUG] debug line 42"), "{text}");
        assert!(!text.contains("trace line"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
