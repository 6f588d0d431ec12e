//! What the agent needs to run a Lambda function: its configuration (written by the builder
//! into the initramfs as [`kiln_protocol::pairs`], keys in `kiln_protocol::lambda_config`),
//! where things are ([`Layout`]: `/var/task` and friends in the guest, given directories on a
//! host), the runtime's environment, and which bootstrap to start.
//!
//! The bootstrap, by runtime:
//! - `provided`, `provided.al2`, `provided.al2023`: the function's own `bootstrap`, the first
//!   of `<task root>/bootstrap`, `/opt/bootstrap`;
//! - `python3.N`: `<runtime dir>/bootstrap` when the root file system has one (AWS's base
//!   images do), else `python3 -m awslambdaric <handler>` (the runtime interface client from
//!   PyPI, found through `PATH`).

use kiln_protocol::{lambda_config as key, pairs};
use std::path::{Path, PathBuf};

/// Lambda's port of the Runtime API inside the sandbox.
pub const GUEST_RUNTIME_API: &str = "127.0.0.1:9001";
/// `PATH` of the runtime in the guest (Lambda's).
pub const GUEST_PATH: &str = "/var/lang/bin:/usr/local/bin:/usr/bin/:/bin:/opt/bin";
/// `LD_LIBRARY_PATH` of the runtime in the guest (Lambda's).
pub const GUEST_LD_LIBRARY_PATH: &str =
    "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the Lambda configuration is malformed: {0}")]
    Pairs(kiln_protocol::pairs::PairsError),
    #[error("the Lambda configuration has no {0}")]
    Missing(&'static str),
    #[error("the Lambda configuration's {key} is not a number: {value:?}")]
    NotANumber { key: &'static str, value: String },
    #[error("the Lambda configuration's environment entry {0:?} is not NAME=VALUE")]
    BadEnv(String),
}

/// A Lambda function's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaConfig {
    pub name: String,
    /// Lambda's runtime identifier.
    pub runtime: String,
    /// `_HANDLER` (may be empty).
    pub handler: String,
    pub memory_mib: u32,
    pub timeout_ms: u64,
    /// The function's own variables, in order.
    pub environment: Vec<(String, String)>,
}

impl LambdaConfig {
    /// Reads the configuration's bytes.
    pub fn parse(bytes: &[u8]) -> Result<LambdaConfig, ConfigError> {
        let (mut name, mut runtime, mut handler, mut memory, mut timeout) =
            (None, None, None, None, None);
        let mut environment = Vec::new();
        for pair in pairs::iter(bytes) {
            let (k, v) = pair.map_err(ConfigError::Pairs)?;
            match k {
                key::NAME => name = Some(v.to_string()),
                key::RUNTIME => runtime = Some(v.to_string()),
                key::HANDLER => handler = Some(v.to_string()),
                key::MEMORY_MIB => memory = Some(number(key::MEMORY_MIB, v)?),
                key::TIMEOUT_MS => timeout = Some(number(key::TIMEOUT_MS, v)?),
                key::ENV => {
                    let (n, val) = v
                        .split_once('=')
                        .filter(|(n, _)| !n.is_empty())
                        .ok_or_else(|| ConfigError::BadEnv(v.to_string()))?;
                    environment.push((n.to_string(), val.to_string()));
                }
                _ => {}
            }
        }
        Ok(LambdaConfig {
            name: name.ok_or(ConfigError::Missing(key::NAME))?,
            runtime: runtime.ok_or(ConfigError::Missing(key::RUNTIME))?,
            handler: handler.unwrap_or_default(),
            memory_mib: u32::try_from(memory.unwrap_or(128)).unwrap_or(u32::MAX),
            timeout_ms: timeout.unwrap_or(3000),
            environment,
        })
    }
}

fn number(key: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.parse().map_err(|_| ConfigError::NotANumber {
        key,
        value: v.to_string(),
    })
}

/// Where the function's files are, and where the Runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `LAMBDA_TASK_ROOT`: the function's code (`/var/task`).
    pub task_root: PathBuf,
    /// `LAMBDA_RUNTIME_DIR` (`/var/runtime`); `None` on a host.
    pub runtime_dir: Option<PathBuf>,
    /// Layers (`/opt`); `None` on a host.
    pub opt_dir: Option<PathBuf>,
    /// The Runtime API's address (`127.0.0.1:9001`; port 0 on a host: any free one).
    pub runtime_api: String,
    /// The guest's `PATH` and `LD_LIBRARY_PATH`; `None` on a host (the agent's own `PATH`).
    pub guest_paths: bool,
}

impl Layout {
    /// Lambda's layout, in the guest.
    pub fn guest() -> Layout {
        Layout {
            task_root: PathBuf::from("/var/task"),
            runtime_dir: Some(PathBuf::from("/var/runtime")),
            opt_dir: Some(PathBuf::from("/opt")),
            runtime_api: GUEST_RUNTIME_API.into(),
            guest_paths: true,
        }
    }

    /// On a host (tests): the code in `task_root`, the runtime from the agent's `PATH`.
    pub fn host(task_root: PathBuf, runtime_api: String) -> Layout {
        Layout {
            task_root,
            runtime_dir: None,
            opt_dir: None,
            runtime_api,
            guest_paths: false,
        }
    }
}

/// The program and arguments that start the runtime, or why there are none.
pub fn bootstrap(cfg: &LambdaConfig, layout: &Layout) -> Result<Vec<String>, String> {
    let runtime_bootstrap = layout
        .runtime_dir
        .as_ref()
        .map(|d| d.join("bootstrap"))
        .filter(|p| is_executable(p));
    if cfg.runtime.starts_with("provided") {
        let candidates: Vec<PathBuf> = [Some(layout.task_root.clone()), layout.opt_dir.clone()]
            .into_iter()
            .flatten()
            .map(|d| d.join("bootstrap"))
            .collect();
        return candidates
            .iter()
            .find(|p| is_executable(p))
            .map(|p| vec![p.display().to_string()])
            .ok_or_else(|| {
                let names: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                format!("Couldn't find valid bootstrap(s): [{}]", names.join(" "))
            });
    }
    if cfg.runtime.starts_with("python3") {
        if let Some(b) = runtime_bootstrap {
            return Ok(vec![b.display().to_string()]);
        }
        return Ok(vec![
            "python3".into(),
            "-m".into(),
            "awslambdaric".into(),
            cfg.handler.clone(),
        ]);
    }
    Err(format!(
        "runtime {:?} is not one Kiln starts (provided, provided.al2, provided.al2023, python3.N)",
        cfg.runtime
    ))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The runtime's environment: Lambda's variables, then the function's own (which may not
/// replace Lambda's: the builder refuses reserved names).
pub fn environment(cfg: &LambdaConfig, layout: &Layout, api: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("_HANDLER".into(), cfg.handler.clone()),
        ("AWS_LAMBDA_RUNTIME_API".into(), api.into()),
        (
            "LAMBDA_TASK_ROOT".into(),
            layout.task_root.display().to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), cfg.name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            cfg.memory_mib.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".into(),
            format!("/aws/lambda/{}", cfg.name),
        ),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), "[$LATEST]kiln".into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ("TZ".into(), ":UTC".into()),
        ("LANG".into(), "en_US.UTF-8".into()),
    ];
    if let Some(d) = &layout.runtime_dir {
        env.push(("LAMBDA_RUNTIME_DIR".into(), d.display().to_string()));
    }
    if !cfg.runtime.starts_with("provided") {
        env.push((
            "AWS_EXECUTION_ENV".into(),
            format!("AWS_Lambda_{}", cfg.runtime),
        ));
    }
    if layout.guest_paths {
        env.push(("PATH".into(), GUEST_PATH.into()));
        env.push(("LD_LIBRARY_PATH".into(), GUEST_LD_LIBRARY_PATH.into()));
    } else if let Ok(path) = std::env::var("PATH") {
        env.push(("PATH".into(), path));
    }
    env.extend(cfg.environment.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(runtime: &str) -> LambdaConfig {
        let mut b = Vec::new();
        for (k, v) in [
            (key::NAME, "f"),
            (key::RUNTIME, runtime),
            (key::HANDLER, "app.handler"),
            (key::MEMORY_MIB, "256"),
            (key::ENV, "GREETING=hello=world"),
            (key::ENV, "EMPTY="),
        ] {
            pairs::put(&mut b, k, v).unwrap();
        }
        LambdaConfig::parse(&b).unwrap()
    }

    #[test]
    fn the_configuration_is_read_with_defaults() {
        let c = config("python3.11");
        assert_eq!(
            (
                c.name.as_str(),
                c.handler.as_str(),
                c.memory_mib,
                c.timeout_ms
            ),
            ("f", "app.handler", 256, 3000)
        );
        assert_eq!(
            c.environment,
            [
                ("GREETING".to_string(), "hello=world".to_string()),
                ("EMPTY".to_string(), String::new())
            ]
        );
        let mut b = Vec::new();
        pairs::put(&mut b, key::NAME, "f").unwrap();
        assert_eq!(
            LambdaConfig::parse(&b),
            Err(ConfigError::Missing(key::RUNTIME))
        );
        pairs::put(&mut b, key::RUNTIME, "provided").unwrap();
        pairs::put(&mut b, key::TIMEOUT_MS, "soon").unwrap();
        assert!(matches!(
            LambdaConfig::parse(&b),
            Err(ConfigError::NotANumber { .. })
        ));
        let mut b = Vec::new();
        pairs::put(&mut b, key::ENV, "=x").unwrap();
        assert!(matches!(
            LambdaConfig::parse(&b),
            Err(ConfigError::BadEnv(_))
        ));
        assert!(matches!(
            LambdaConfig::parse(b"name"),
            Err(ConfigError::Pairs(_))
        ));
    }

    #[test]
    fn bootstraps_by_runtime() {
        let dir = std::env::temp_dir().join(format!("kiln-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = Layout::host(dir.clone(), "127.0.0.1:0".into());
        let e = bootstrap(&config("provided.al2023"), &layout).unwrap_err();
        assert_eq!(
            e,
            format!(
                "Couldn't find valid bootstrap(s): [{}/bootstrap]",
                dir.display()
            )
        );
        let b = dir.join("bootstrap");
        std::fs::write(&b, "#!/bin/sh\n").unwrap();
        assert!(
            bootstrap(&config("provided"), &layout).is_err(),
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            bootstrap(&config("provided.al2"), &layout).unwrap(),
            [b.display().to_string()]
        );
        assert_eq!(
            bootstrap(&config("python3.12"), &layout).unwrap(),
            ["python3", "-m", "awslambdaric", "app.handler"]
        );
        assert!(bootstrap(&config("nodejs20.x"), &layout)
            .unwrap_err()
            .contains("not one Kiln starts"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_environment_is_lambdas_then_the_functions() {
        let env = environment(&config("python3.12"), &Layout::guest(), "127.0.0.1:9001");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AWS_LAMBDA_RUNTIME_API"), Some("127.0.0.1:9001"));
        assert_eq!(get("_HANDLER"), Some("app.handler"));
        assert_eq!(get("LAMBDA_TASK_ROOT"), Some("/var/task"));
        assert_eq!(get("LAMBDA_RUNTIME_DIR"), Some("/var/runtime"));
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(get("AWS_EXECUTION_ENV"), Some("AWS_Lambda_python3.12"));
        assert_eq!(get("PATH"), Some(GUEST_PATH));
        assert_eq!(get("GREETING"), Some("hello=world"));
        let provided = environment(&config("provided"), &Layout::guest(), "a:1");
        assert!(!provided.iter().any(|(n, _)| n == "AWS_EXECUTION_ENV"));
    }
}
