//! `logger` and `metrics`: where the VMM writes its logs and metrics.

use super::spec::null_as_default;
use super::ResourceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Levels are matched case-insensitively, and `Warn` is accepted for `Warning`, as
/// Firecracker's `PUT /logger` does.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    #[default]
    Warning,
    Info,
    Debug,
    Trace,
}

const LEVEL_NAMES: &[&str] = &["Off", "Error", "Warning", "Info", "Debug", "Trace"];

impl std::str::FromStr for LogLevel {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err("use Off, Error, Warning, Info, Debug or Trace"),
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::unknown_variant(&s, LEVEL_NAMES))
    }
}

/// `PUT /logger`. As in Firecracker, an absent `level` means `Info` (the default level),
/// and the other absent fields keep their current value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// A file or FIFO, opened for appending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file or FIFO, opened for appending.
    pub metrics_path: String,
    /// Adds the microVM's id (`--id`) as a top-level `"id"` to every metrics line.
    #[serde(default, deserialize_with = "null_as_default")]
    pub emit_id: bool,
    /// The caller's key-value pairs, written as a top-level `"properties"` object on every
    /// metrics line (bounded by the request or config file size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

fn check_output_path(field: &'static str, path: &str) -> Result<(), ResourceError> {
    if path.is_empty() || path.contains('\0') {
        return Err(ResourceError::BadPath {
            field,
            path: path.to_string(),
            reason: "empty or contains a NUL byte".into(),
        });
    }
    Ok(())
}

impl LoggerConfig {
    pub fn validated(self) -> Result<Self, ResourceError> {
        if let Some(p) = &self.log_path {
            check_output_path("logger.log_path", p)?;
        }
        Ok(self)
    }
}

impl MetricsConfig {
    /// Metrics to `path` with the default options (`--metrics-path`).
    pub fn new(path: &str) -> MetricsConfig {
        MetricsConfig {
            metrics_path: path.to_string(),
            ..MetricsConfig::default()
        }
    }

    pub fn validated(self) -> Result<Self, ResourceError> {
        check_output_path("metrics.metrics_path", &self.metrics_path)?;
        Ok(self)
    }
}
