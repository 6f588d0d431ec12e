//! The function manifest, `kiln.json` beside the function's Cargo.toml:
//!
//! ```json
//! { "name": "echo", "memory_mib": 16, "vcpus": 1, "timeout_ms": 1000,
//!   "concurrency": 4, "max_event_bytes": 1048576 }
//! ```
//!
//! A Linux function (`"kind": "linux"`) is a static executable served by kiln-init in a Linux
//! guest instead of a freestanding image:
//!
//! ```json
//! { "name": "linux-echo", "kind": "linux", "exec": "target/x86_64-unknown-linux-gnu/release/linux-echo",
//!   "memory_mib": 128, "hello_timeout_ms": 180000 }
//! ```
//!
//! A Linux function can also be a Lambda function, configured the way a Lambda function
//! configuration is (`runtime`, `handler`, `environment`): kiln-init serves it Lambda's
//! Runtime API and runs its runtime (see [`LAMBDA_RUNTIMES`]):
//!
//! ```json
//! { "name": "lambda-python", "kind": "linux", "runtime": "python3.11", "handler": "app.handler",
//!   "rootfs": "rootfs", "memory_mib": 512, "environment": {"GREETING": "hello"} }
//! ```
//!
//! An image function may ask to start its instances from a snapshot (`"snapshot_start":
//! true`). Only `name` is required; unknown fields are refused. [`Manifest::validate`] checks every
//! field against what the runtime and the protocol allow, each error naming the field and its
//! value.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest's file name in the function's directory.
pub const MANIFEST_FILE: &str = "kiln.json";

/// Largest manifest file.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Longest function name (the worker uses it in paths and socket names).
pub const MAX_NAME_LEN: usize = 40;
/// Smallest guest memory: 4 MiB below the heap (image, stacks), 2 MiB of heap at least.
pub const MIN_MEMORY_MIB: u32 = 8;
/// Largest guest memory: the runtime's heap lives below the 32-bit MMIO gap.
pub const MAX_MEMORY_MIB: u32 = 3072;
/// What the runtime needs besides the event and its response: 4 MiB below the heap, the
/// vsock buffers (~1.5 MiB) and some room.
pub const RUNTIME_RESERVED_MIB: u64 = 6;
/// Longest timeout: 15 minutes, as Lambda.
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Most instances of one function at a time.
pub const MAX_CONCURRENCY: u32 = 1024;

/// Smallest guest memory of a Linux function (the kernel and its initramfs).
pub const MIN_LINUX_MEMORY_MIB: u32 = 128;
/// Default deadline for a Linux function's guest to say Hello (a kernel boots first).
pub const DEFAULT_LINUX_HELLO_TIMEOUT_MS: u64 = 180_000;

/// The Lambda runtimes kiln-init starts: the `provided` family (the function's `bootstrap`)
/// and `python3.N` (AWS's bootstrap in the root file system, else `python3 -m awslambdaric`).
pub const LAMBDA_RUNTIMES: &str = "provided, provided.al2, provided.al2023, python3.N";
/// Longest handler string (Lambda's limit).
pub const MAX_HANDLER_LEN: usize = 128;
/// Most bytes of a Lambda function's environment (names and values; Lambda's limit).
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;
/// Variables the agent sets for the runtime: a function's `environment` may not name them.
pub const RESERVED_VARIABLES: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// What a function is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A freestanding function image on kiln-runtime (no guest OS), booted as the kernel.
    #[default]
    Image,
    /// A static Linux executable (`exec`), served by kiln-init as `/init` of a Linux guest.
    Linux,
}

/// A function's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name: 1-40 characters from `[A-Za-z0-9_-]`, starting with a letter or
    /// digit. The guest sends it in Hello; the worker expects it to equal the directory name.
    pub name: String,
    /// Guest memory in MiB (default 16). At least 8, and at least 6 + twice
    /// `max_event_bytes` (the event and its response live on the heap).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// vCPUs (default 1). A function image with no OS runs on one vCPU: only 1 is accepted.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Longest invocation in ms before the worker stops the VM (default 3000; 1..=900000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most instances (VMs) of this function the worker runs at once (default 1;
    /// 1..=1024). Each instance serves one invocation at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Largest event in bytes (default 1 MiB; 1..=6 MiB, the protocol's limit). Larger
    /// events are refused by the guest with `EventTooLarge`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u32,
    /// `"image"` (default) or `"linux"`.
    #[serde(default)]
    pub kind: Kind,
    /// Linux functions only (and required there): the handler, a static executable, as a
    /// path relative to the function's directory (event on stdin, response on stdout,
    /// non-zero exit = error). When the directory has a Cargo.toml, the crate is built first
    /// with its target directory at `<dir>/target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// Linux functions only: how long the worker waits for the guest's Hello (the kernel
    /// boots first); default [`DEFAULT_LINUX_HELLO_TIMEOUT_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_timeout_ms: Option<u64>,
    /// Makes a Linux function a Lambda function: Lambda's runtime identifier (one of
    /// [`LAMBDA_RUNTIMES`]). Its `exec`, if any, is its `bootstrap` (`provided` runtimes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Lambda functions: the handler (`_HANDLER`, e.g. `app.handler`); required for
    /// `python3.N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Lambda functions: the directory (relative, default `.`) whose files are the function's
    /// code, `/var/task` in the guest (`kiln.json`, `target/` and `rootfs` left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Lambda functions: a directory (relative) holding a root file system for the runtime
    /// (Python and its libraries, e.g. an exported Lambda base image), packed as `/` of the
    /// guest under kiln-init and the code. Required for `python3.N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// Lambda functions: environment variables of the runtime.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Image functions only: the worker boots the function once, snapshots it as soon as it
    /// said Hello, and starts every later cold instance by restoring that snapshot
    /// (docs/worker.md, "Snapshot start"). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_start: bool,
}

fn default_memory_mib() -> u32 {
    16
}
fn default_vcpus() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    3000
}
fn default_concurrency() -> u32 {
    1
}
fn default_max_event_bytes() -> u32 {
    1 << 20
}

/// What is wrong with a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: kiln_hostfs::InputError,
    },
    #[error("manifest {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("manifest {path}: field {field} = {value}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: String,
    },
}

impl Manifest {
    /// Reads and validates `<dir>/kiln.json` (at most [`MAX_MANIFEST_BYTES`], a regular file,
    /// not through a symbolic link: the directory is the function author's).
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let read = kiln_hostfs::read_beneath(dir, Path::new(MANIFEST_FILE), MAX_MANIFEST_BYTES);
        let text = read
            .and_then(|b| String::from_utf8(b).map_err(|_| kiln_hostfs::InputError::NotUtf8))
            .map_err(|source| ManifestError::Read {
                path: path.clone(),
                source,
            })?;
        Manifest::parse(&text, &path)
    }

    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        m.validate(path)?;
        Ok(m)
    }

    /// Checks every field; `path` is only used in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |field: &'static str, value: String, reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
            reason,
        };
        let name_ok = (1..=MAX_NAME_LEN).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            && self
                .name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !name_ok {
            return Err(bad(
                "name",
                format!("{:?}", self.name),
                format!(
                    "must be 1-{MAX_NAME_LEN} characters from [A-Za-z0-9_-], starting with a letter or digit"
                ),
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(bad(
                "memory_mib",
                self.memory_mib.to_string(),
                format!("must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"),
            ));
        }
        if self.kind == Kind::Linux && self.memory_mib < MIN_LINUX_MEMORY_MIB {
            return Err(bad(
                "memory_mib",
                self.memory_mib.to_string(),
                format!("a Linux function needs at least {MIN_LINUX_MEMORY_MIB} MiB"),
            ));
        }
        self.validate_exec(path)?;
        self.validate_lambda(path)?;
        match (self.kind, self.hello_timeout_ms) {
            (Kind::Image, Some(t)) => {
                return Err(bad(
                    "hello_timeout_ms",
                    t.to_string(),
                    "only a function of \"kind\": \"linux\" has a hello_timeout_ms (an image \
                     is ready within the worker's --start-timeout-ms)"
                        .into(),
                ))
            }
            (Kind::Linux, Some(t)) if !(1..=MAX_TIMEOUT_MS).contains(&t) => {
                return Err(bad(
                    "hello_timeout_ms",
                    t.to_string(),
                    format!("must be 1..={MAX_TIMEOUT_MS}"),
                ))
            }
            _ => {}
        }
        if self.snapshot_start && self.kind == Kind::Linux {
            return Err(bad(
                "snapshot_start",
                "true".into(),
                "only a function image starts from a snapshot (kiln-init does not reconnect after a restore yet)"
                    .into(),
            ));
        }
        if self.vcpus != 1 {
            return Err(bad(
                "vcpus",
                self.vcpus.to_string(),
                "a function image with no OS runs on one vCPU: use 1".into(),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(bad(
                "timeout_ms",
                self.timeout_ms.to_string(),
                format!("must be 1..={MAX_TIMEOUT_MS}"),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(bad(
                "concurrency",
                self.concurrency.to_string(),
                format!("must be 1..={MAX_CONCURRENCY}"),
            ));
        }
        let max_payload = kiln_protocol::DEFAULT_MAX_PAYLOAD;
        if !(1..=max_payload).contains(&self.max_event_bytes) {
            return Err(bad(
                "max_event_bytes",
                self.max_event_bytes.to_string(),
                format!("must be 1..={max_payload} (the protocol's limit)"),
            ));
        }
        let needed_mib =
            RUNTIME_RESERVED_MIB + (2 * u64::from(self.max_event_bytes)).div_ceil(1 << 20);
        if u64::from(self.memory_mib) < needed_mib {
            return Err(bad(
                "memory_mib",
                self.memory_mib.to_string(),
                format!(
                    "too small for events of max_event_bytes = {}: needs at least {needed_mib} \
                     ({RUNTIME_RESERVED_MIB} MiB for the runtime, twice the largest event for it and its response)",
                    self.max_event_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// A relative path inside the function's directory, without `..` (or `.` alone when
/// `dot_ok`).
fn is_inside(p: &str, dot_ok: bool) -> bool {
    if dot_ok && p == "." {
        return true;
    }
    let path = Path::new(p);
    !p.is_empty()
        && path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// `python3.N`, `provided`, `provided.al2`, `provided.al2023`.
fn known_runtime(r: &str) -> bool {
    matches!(r, "provided" | "provided.al2" | "provided.al2023")
        || r.strip_prefix("python3.")
            .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Manifest {
    /// Whether this is a Lambda function (a Linux function with a `runtime`).
    pub fn is_lambda(&self) -> bool {
        self.kind == Kind::Linux && self.runtime.is_some()
    }

    fn validate_exec(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |value: String, reason: &str| ManifestError::Invalid {
            path: path.to_path_buf(),
            field: "exec",
            value,
            reason: reason.into(),
        };
        match (self.kind, &self.exec) {
            (Kind::Image, Some(exec)) => Err(bad(
                format!("{exec:?}"),
                "only a function of \"kind\": \"linux\" has an exec",
            )),
            (Kind::Linux, None) if self.runtime.is_none() => Err(bad(
                "(missing)".into(),
                "a Linux function names its executable, relative to the function's directory (or is a Lambda function: \"runtime\")",
            )),
            (Kind::Linux, Some(exec)) if !is_inside(exec, false) => Err(bad(
                format!("{exec:?}"),
                "must be a relative path inside the function's directory, without `..`",
            )),
            (Kind::Linux, Some(exec))
                if self.runtime.as_deref().is_some_and(|r| !r.starts_with("provided")) =>
            {
                Err(bad(
                    format!("{exec:?}"),
                    "only a `provided` runtime has an exec (its bootstrap)",
                ))
            }
            _ => Ok(()),
        }
    }

    fn validate_lambda(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |field: &'static str, value: String, reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
            reason,
        };
        let Some(runtime) = &self.runtime else {
            let fields: [(&'static str, bool); 4] = [
                ("handler", self.handler.is_some()),
                ("code", self.code.is_some()),
                ("rootfs", self.rootfs.is_some()),
                ("environment", !self.environment.is_empty()),
            ];
            if let Some((field, _)) = fields.iter().find(|(_, set)| *set) {
                return Err(bad(
                    field,
                    "(set)".into(),
                    "only a Lambda function (\"kind\": \"linux\" with a \"runtime\") has one"
                        .into(),
                ));
            }
            return Ok(());
        };
        if self.kind != Kind::Linux {
            return Err(bad(
                "runtime",
                format!("{runtime:?}"),
                "a Lambda function is a Linux function: add \"kind\": \"linux\"".into(),
            ));
        }
        if !known_runtime(runtime) {
            return Err(bad(
                "runtime",
                format!("{runtime:?}"),
                format!("Kiln starts the runtimes {LAMBDA_RUNTIMES}; for another language, package a custom runtime as a `bootstrap` (provided.al2023)"),
            ));
        }
        let python = runtime.starts_with("python3.");
        match &self.handler {
            None if python => {
                return Err(bad(
                    "handler",
                    "(missing)".into(),
                    format!("a {runtime} function names its handler, e.g. \"app.handler\""),
                ))
            }
            Some(h)
                if h.is_empty()
                    || h.len() > MAX_HANDLER_LEN
                    || h.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(bad(
                    "handler",
                    format!("{h:?}"),
                    format!("must be 1-{MAX_HANDLER_LEN} characters without whitespace"),
                ))
            }
            _ => {}
        }
        for (field, value) in [("code", &self.code), ("rootfs", &self.rootfs)] {
            if let Some(v) = value {
                if !is_inside(v, field == "code") {
                    return Err(bad(
                        field,
                        format!("{v:?}"),
                        "must be a directory inside the function's directory, without `..`".into(),
                    ));
                }
            }
        }
        if python && self.rootfs.is_none() {
            return Err(bad(
                "rootfs",
                "(missing)".into(),
                format!("a {runtime} function needs a root file system with Python and awslambdaric (the guest has no Python of its own; see docs/worker.md)"),
            ));
        }
        let mut bytes = 0;
        for (name, value) in &self.environment {
            let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok || value.contains('\0') {
                return Err(bad(
                    "environment",
                    format!("{name:?}"),
                    "names are letters, digits and `_`, starting with a letter; values have no NUL"
                        .into(),
                ));
            }
            if RESERVED_VARIABLES.contains(&name.as_str()) {
                return Err(bad(
                    "environment",
                    format!("{name:?}"),
                    "is set by the agent for every Lambda function (reserved, as on Lambda)".into(),
                ));
            }
            bytes += name.len() + value.len();
        }
        if bytes > MAX_ENVIRONMENT_BYTES {
            return Err(bad(
                "environment",
                format!("{bytes} bytes"),
                format!("must be at most {MAX_ENVIRONMENT_BYTES} bytes (names and values)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/f/kiln.json"))
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"{"name": "echo", "memory_mib": 16, "vcpus": 1, "timeout_ms": 1000,
                "concurrency": 4, "max_event_bytes": 1048576}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            Manifest {
                name: "echo".into(),
                memory_mib: 16,
                vcpus: 1,
                timeout_ms: 1000,
                concurrency: 4,
                max_event_bytes: 1 << 20,
                kind: Kind::Image,
                exec: None,
                hello_timeout_ms: None,
                runtime: None,
                handler: None,
                code: None,
                rootfs: None,
                environment: BTreeMap::new(),
                snapshot_start: false,
            }
        );
    }

    #[test]
    fn only_the_name_is_required() {
        let m = parse(r#"{"name": "f"}"#).unwrap();
        assert_eq!(
            (
                m.memory_mib,
                m.vcpus,
                m.timeout_ms,
                m.concurrency,
                m.max_event_bytes
            ),
            (16, 1, 3000, 1, 1 << 20)
        );
        let e = parse("{}").unwrap_err().to_string();
        assert!(e.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let e = parse(r#"{"name": "f", "memory": 16}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e = parse(r#"{"name": "f", "vcpus": 300}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/f/kiln.json"), "{e}");
        let e = parse(r#"{"name": "f", "timeout_ms": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid value"), "{e}");
        assert!(matches!(
            parse("not json"),
            Err(ManifestError::Parse { .. })
        ));
    }

    /// Each bad value is refused with an error naming the field and the value.
    #[test]
    fn validation_table() {
        let cases: &[(&str, &str, &str)] = &[
            (r#""name": """#, "name", "\"\""),
            (r#""name": "-x""#, "name", "\"-x\""),
            (r#""name": "a/b""#, "name", "\"a/b\""),
            (r#""name": "a b""#, "name", "\"a b\""),
            (r#""name": "é""#, "name", "\"é\""),
            (
                r#""name": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
                "name",
                "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
            ),
            (r#""name": "f", "memory_mib": 7"#, "memory_mib", "7"),
            (r#""name": "f", "memory_mib": 3073"#, "memory_mib", "3073"),
            (r#""name": "f", "vcpus": 0"#, "vcpus", "0"),
            (r#""name": "f", "vcpus": 2"#, "vcpus", "2"),
            (r#""name": "f", "timeout_ms": 0"#, "timeout_ms", "0"),
            (
                r#""name": "f", "timeout_ms": 900001"#,
                "timeout_ms",
                "900001",
            ),
            (r#""name": "f", "concurrency": 0"#, "concurrency", "0"),
            (r#""name": "f", "concurrency": 1025"#, "concurrency", "1025"),
            (
                r#""name": "f", "max_event_bytes": 0"#,
                "max_event_bytes",
                "0",
            ),
            (
                r#""name": "f", "max_event_bytes": 6291457, "memory_mib": 64"#,
                "max_event_bytes",
                "6291457",
            ),
            (
                r#""name": "f", "max_event_bytes": 6291456, "memory_mib": 16"#,
                "memory_mib",
                "16",
            ),
        ];
        for (fields, field, value) in cases {
            let text = format!("{{{fields}}}");
            match parse(&text) {
                Err(ManifestError::Invalid {
                    field: f, value: v, ..
                }) => {
                    assert_eq!((f, v.as_str()), (*field, *value), "{text}");
                }
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
            let message = parse(&text).unwrap_err().to_string();
            assert!(
                message.contains(field) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn linux_functions() {
        let m =
            parse(r#"{"name": "l", "kind": "linux", "exec": "bin/h", "memory_mib": 128}"#).unwrap();
        assert_eq!(
            (m.kind, m.exec.as_deref(), m.hello_timeout_ms),
            (Kind::Linux, Some("bin/h"), None)
        );
        let m = parse(
            r#"{"name": "l", "kind": "linux", "exec": "h", "memory_mib": 256, "hello_timeout_ms": 60000}"#,
        )
        .unwrap();
        assert_eq!(m.hello_timeout_ms, Some(60000));
        assert_eq!(
            parse(r#"{"name": "f", "kind": "image"}"#).unwrap().kind,
            Kind::Image
        );
        let e = parse(r#"{"name": "f", "kind": "wasm"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `wasm`"), "{e}");
        let cases: &[(&str, &str, &str)] = &[
            (r#""kind": "linux", "memory_mib": 128"#, "exec", "(missing)"),
            (r#""kind": "linux", "exec": "h""#, "memory_mib", "16"),
            (
                r#""kind": "linux", "exec": "h", "memory_mib": 127"#,
                "memory_mib",
                "127",
            ),
            (
                r#""kind": "linux", "exec": "", "memory_mib": 128"#,
                "exec",
                "\"\"",
            ),
            (
                r#""kind": "linux", "exec": "/bin/h", "memory_mib": 128"#,
                "exec",
                "\"/bin/h\"",
            ),
            (
                r#""kind": "linux", "exec": "a/../../h", "memory_mib": 128"#,
                "exec",
                "\"a/../../h\"",
            ),
            (
                r#""kind": "linux", "exec": "./h", "memory_mib": 128"#,
                "exec",
                "\"./h\"",
            ),
            (r#""exec": "h""#, "exec", "\"h\""),
            (r#""hello_timeout_ms": 5"#, "hello_timeout_ms", "5"),
            (
                r#""kind": "linux", "exec": "h", "memory_mib": 128, "hello_timeout_ms": 0"#,
                "hello_timeout_ms",
                "0",
            ),
        ];
        for (fields, field, value) in cases {
            let text = format!(r#"{{"name": "f", {fields}}}"#);
            let message = match parse(&text) {
                Err(e @ ManifestError::Invalid { .. }) => e.to_string(),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            };
            assert!(
                message.contains(&format!("field {field} = {value}:")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn lambda_functions() {
        let m = parse(
            r#"{"name": "p", "kind": "linux", "runtime": "python3.12", "handler": "app.handler",
                "rootfs": "rootfs", "memory_mib": 512, "environment": {"GREETING": "hi", "A_1": ""}}"#,
        )
        .unwrap();
        assert!(m.is_lambda());
        assert_eq!(
            m.environment.get("GREETING").map(String::as_str),
            Some("hi")
        );
        let b = parse(
            r#"{"name": "b", "kind": "linux", "runtime": "provided.al2023", "exec": "target/release/b", "memory_mib": 128}"#,
        )
        .unwrap();
        assert_eq!(
            (b.runtime.as_deref(), b.handler.as_deref()),
            (Some("provided.al2023"), None)
        );
        parse(r#"{"name": "b", "kind": "linux", "runtime": "provided", "code": ".", "memory_mib": 128}"#)
            .unwrap();
        assert!(!parse(r#"{"name": "f"}"#).unwrap().is_lambda());
        let big = format!(r#""E": "{}""#, "x".repeat(4100));
        let cases: Vec<(String, &str, String)> = vec![
            (r#""runtime": "python3.12""#.into(), "runtime", "\"python3.12\"".into()),
            (r#""kind": "linux", "runtime": "nodejs20.x", "memory_mib": 128"#.into(), "runtime", "\"nodejs20.x\"".into()),
            (r#""kind": "linux", "runtime": "python3.", "memory_mib": 128"#.into(), "runtime", "\"python3.\"".into()),
            (r#""kind": "linux", "runtime": "python3.12", "rootfs": "r", "memory_mib": 128"#.into(), "handler", "(missing)".into()),
            (r#""kind": "linux", "runtime": "python3.12", "handler": "a b", "rootfs": "r", "memory_mib": 128"#.into(), "handler", "\"a b\"".into()),
            (r#""kind": "linux", "runtime": "python3.12", "handler": "a.h", "memory_mib": 128"#.into(), "rootfs", "(missing)".into()),
            (r#""kind": "linux", "runtime": "python3.12", "handler": "a.h", "rootfs": "../r", "memory_mib": 128"#.into(), "rootfs", "\"../r\"".into()),
            (r#""kind": "linux", "runtime": "provided", "code": "/abs", "memory_mib": 128"#.into(), "code", "\"/abs\"".into()),
            (r#""kind": "linux", "runtime": "python3.12", "handler": "a.h", "rootfs": "r", "exec": "x", "memory_mib": 128"#.into(), "exec", "\"x\"".into()),
            (r#""kind": "linux", "runtime": "provided", "environment": {"_HANDLER": "x"}, "memory_mib": 128"#.into(), "environment", "\"_HANDLER\"".into()),
            (r#""kind": "linux", "runtime": "provided", "environment": {"A-B": "x"}, "memory_mib": 128"#.into(), "environment", "\"A-B\"".into()),
            (format!(r#""kind": "linux", "runtime": "provided", "environment": {{{big}}}, "memory_mib": 128"#), "environment", "4101 bytes".into()),
            (r#""kind": "linux", "exec": "x", "handler": "h", "memory_mib": 128"#.into(), "handler", "(set)".into()),
            (r#""environment": {"A": "b"}"#.into(), "environment", "(set)".into()),
        ];
        for (fields, field, value) in cases {
            let text = format!(r#"{{"name": "f", {fields}}}"#);
            let message = match parse(&text) {
                Err(e @ ManifestError::Invalid { .. }) => e.to_string(),
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            };
            assert!(
                message.contains(&format!("field {field} = {value}:")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn limits_are_accepted() {
        for fields in [
            r#""name": "a", "memory_mib": 8, "max_event_bytes": 1"#,
            r#""name": "A_b-9", "memory_mib": 18, "max_event_bytes": 6291456"#,
            r#""name": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "memory_mib": 3072, "timeout_ms": 900000, "concurrency": 1024"#,
        ] {
            let text = format!("{{{fields}}}");
            parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn load_names_the_file() {
        let e = Manifest::load(Path::new("/nonexistent-kiln-fn")).unwrap_err();
        assert!(matches!(e, ManifestError::Read { .. }));
        assert!(
            e.to_string().contains("/nonexistent-kiln-fn/kiln.json"),
            "{e}"
        );
    }

    /// The function's directory is its author's: its manifest is not read through a link,
    /// nor from a FIFO (which would block the worker), nor beyond a limit.
    #[test]
    fn load_refuses_links_fifos_and_huge_files() {
        let dir = std::env::temp_dir().join(format!("kiln-manifest-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("elsewhere.json");
        std::fs::write(&target, r#"{"name": "f"}"#).unwrap();
        let f = dir.join(MANIFEST_FILE);
        std::os::unix::fs::symlink(&target, &f).unwrap();
        let e = Manifest::load(&dir).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&f).unwrap();
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path; it only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Manifest::load(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&f).unwrap();
        std::fs::write(
            &f,
            " ".repeat(usize::try_from(MAX_MANIFEST_BYTES).unwrap() + 1),
        )
        .unwrap();
        let e = Manifest::load(&dir).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(&f, r#"{"name": "f"}"#).unwrap();
        assert_eq!(Manifest::load(&dir).unwrap().name, "f");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
