//! `serial` (`PUT /serial`): where the guest's serial console output goes, and an optional
//! token bucket of bytes beyond which the output is dropped (Firecracker's
//! `uart.rate_limiter_dropped_bytes`).
//!
//! `serial_out_path` names a file (created if missing, appended to) or a FIFO; it replaces
//! the `--serial-out` flag's destination, and without it the output stays where the flag
//! (or stdout) says. The path is checked when the request is accepted (an existing path must
//! be a regular file or a FIFO, a new one needs its directory) and opened at `InstanceStart`.

use super::rate_limiter::TokenBucketConfig;
use super::ResourceError;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    #[serde(default)]
    pub serial_out_path: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<TokenBucketConfig>,
}

impl SerialConfig {
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        if let Some(path) = &self.serial_out_path {
            check_output_path(path)?;
        }
        let rate_limiter = self
            .rate_limiter
            .map(|b| b.validated("serial.rate_limiter"))
            .transpose()?;
        Ok(SerialConfig {
            rate_limiter,
            ..self
        })
    }
}

/// An output the VMM will open for appending: an existing regular file or FIFO, or a new
/// file in an existing directory.
fn check_output_path(path: &str) -> Result<(), ResourceError> {
    let bad = |reason: &str| ResourceError::BadPath {
        field: "serial.serial_out_path",
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if path.contains('\0') {
        return Err(bad("the path contains a NUL byte"));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_fifo() => Ok(()),
        Ok(_) => Err(bad("not a regular file or a FIFO")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                Ok(())
            } else {
                Err(bad("its directory does not exist"))
            }
        }
        Err(e) => Err(bad(&e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    #[test]
    fn paths_are_checked_when_accepted() {
        let dir = kiln_tests::ScratchDir::new("kiln-serial-cfg");
        let file = dir.write("out.log", "");
        let new = dir.join("new.log");
        for ok in [file.to_str().unwrap(), new.to_str().unwrap()] {
            let c = SerialConfig {
                serial_out_path: Some(ok.into()),
                rate_limiter: None,
            };
            assert!(c.validated().is_ok(), "{ok}");
        }
        let cases = [
            (
                dir.path().to_str().unwrap().to_string(),
                "not a regular file or a FIFO",
            ),
            ("/dev/null".to_string(), "not a regular file or a FIFO"),
            (
                dir.join("no/such/dir/x").to_str().unwrap().to_string(),
                "its directory does not exist",
            ),
            (String::new(), "the path is empty"),
        ];
        for (path, reason) in cases {
            let c = SerialConfig {
                serial_out_path: Some(path.clone()),
                rate_limiter: None,
            };
            let e = c.validated().unwrap_err().to_string();
            assert_eq!(
                e,
                format!("serial.serial_out_path: {path:?} cannot be used: {reason}")
            );
        }
    }

    #[test]
    fn parses_firecrackers_body() {
        let c: SerialConfig = parse_json(
            r#"{"serial_out_path": null, "rate_limiter": {"size": 100, "refill_time": 10}}"#,
        )
        .unwrap();
        assert_eq!(c.serial_out_path, None);
        assert_eq!(c.rate_limiter.unwrap().size, 100);
        let e = parse_json::<SerialConfig>(r#"{"path": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `path`"), "{e}");
    }
}
