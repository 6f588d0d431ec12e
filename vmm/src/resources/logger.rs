//! `logger` and `metrics`: where the VMM writes its logs and metrics.

use super::ResourceError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    #[default]
    Warning,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file or FIFO, opened for appending.
    pub metrics_path: String,
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
    pub fn validated(self) -> Result<Self, ResourceError> {
        check_output_path("metrics.metrics_path", &self.metrics_path)?;
        Ok(self)
    }
}
