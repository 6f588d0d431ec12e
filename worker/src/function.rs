//! The function registry: functions by name from a functions directory (default
//! `examples/functions`), each `<dir>/<name>/kiln.json` plus its sources, built into an image
//! by `kiln_guest_builder::build_function` into a cache directory, and rebuilt when its
//! sources change.
//!
//! Builds are serialised per function with a lock file in the cache directory, so several
//! workers (or tests) sharing a cache never build the same function at once.

use crate::sync::lock;
use crate::sys::{FileLock, SysError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The manifest's file name in a function's directory.
pub const MANIFEST: &str = "kiln.json";
/// Longest function name: it becomes part of jail ids (at most 64 characters).
pub const MAX_NAME_LEN: usize = 40;
/// Kernel command line of a Linux function's guest, before `kiln.exec=`/`kiln.name=`: serial
/// console, reset on reboot (the VMM's end), reboot on panic, no PCI bus scan (the devices
/// are on virtio-mmio), and the work-arounds this kind of host needs. A copy of `kiln_tests::assets::KERNEL_CMDLINE` (tests/src/assets.rs, the
/// source of truth; a unit test keeps them equal).
pub const LINUX_KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off noxsave \
     clearcpuid=popcnt,cx16,smap,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid";
/// How often a function's sources are checked for changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("invalid function name {0:?}: use 1 to {MAX_NAME_LEN} characters from [A-Za-z0-9_-], starting with a letter or digit")]
    BadName(String),
    #[error("unknown function {name:?}: there is no {manifest}")]
    Unknown { name: String, manifest: PathBuf },
    #[error("function {name:?} cannot be built: {message}")]
    Build { name: String, message: String },
    #[error("function {name:?} has a bad manifest: {message}")]
    BadManifest {
        name: String,
        manifest: PathBuf,
        message: String,
    },
    #[error("cannot read the functions directory {path}: {source}")]
    ListDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("function {name:?}: cannot lock its cache: {source}")]
    Lock { name: String, source: SysError },
}

impl FunctionError {
    /// The `code` of the JSON error answer.
    pub fn code(&self) -> &'static str {
        match self {
            FunctionError::BadName(_) | FunctionError::Unknown { .. } => "unknown_function",
            FunctionError::BadManifest { .. } => "bad_manifest",
            FunctionError::Build { .. } => "build_failed",
            _ => "internal_error",
        }
    }
}

/// A built function: its image and the limits from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// The image (an ELF the VMM boots as its kernel), in the cache directory. For a Linux
    /// function: its initramfs (the kernel is the worker's `--kernel`).
    pub image: PathBuf,
    /// Image or Linux function.
    pub kind: kiln_guest_builder::Kind,
    /// Linux functions: how long the guest may take to say Hello (it boots a kernel first).
    pub hello_timeout: Option<Duration>,
    /// The kernel command line the image wants (the VMM's default when `None`).
    pub boot_args: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// The handler's time limit per invocation.
    pub timeout: Duration,
    /// At most this many instances (microVMs) of the function at once.
    pub concurrency: usize,
    /// Largest event accepted.
    pub max_event_bytes: usize,
    /// Changes whenever the function is rebuilt: warm instances of an older build retire.
    pub generation: u64,
    /// Cold instances are restored from a snapshot of the function, taken once after its
    /// Hello (the manifest's `snapshot_start`).
    pub snapshot_start: bool,
}

/// Checks a function name (it becomes a path component and part of jail ids).
pub fn check_name(name: &str) -> Result<(), FunctionError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FunctionError::BadName(name.to_string()))
    }
}

/// What the sources of a function looked like when it was built: (newest mtime, total size,
/// file count) over its directory, `target/` excepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    newest: Option<SystemTime>,
    bytes: u64,
    files: u64,
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut fp = Fingerprint {
        newest: None,
        bytes: 0,
        files: 0,
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if e.file_name() != "target" {
                    stack.push(e.path());
                }
                continue;
            }
            fp.files += 1;
            fp.bytes += meta.len();
            if let Ok(m) = meta.modified() {
                fp.newest = Some(fp.newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    fp
}

struct Entry {
    function: Arc<Function>,
    fingerprint: Fingerprint,
    checked: Instant,
}

/// Functions by name, built on first use and rebuilt when their sources change.
pub struct Registry {
    functions_dir: PathBuf,
    cache_dir: PathBuf,
    /// kiln-init, `/init` of Linux functions' initramfs.
    init: Option<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
    /// One lock per function name, so that two requests do not build it twice.
    building: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(functions_dir: PathBuf, cache_dir: PathBuf) -> Registry {
        Registry {
            functions_dir,
            cache_dir,
            init: None,
            entries: Mutex::new(HashMap::new()),
            building: Mutex::new(HashMap::new()),
            next_generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The kiln-init binary that Linux functions are built with.
    pub fn with_init(mut self, init: PathBuf) -> Registry {
        self.init = Some(init);
        self
    }

    pub fn functions_dir(&self) -> &Path {
        &self.functions_dir
    }

    /// The names of the functions in the functions directory (directories with a
    /// manifest), sorted.
    pub fn names(&self) -> Result<Vec<String>, FunctionError> {
        let entries =
            std::fs::read_dir(&self.functions_dir).map_err(|source| FunctionError::ListDir {
                path: self.functions_dir.clone(),
                source,
            })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join(MANIFEST).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The function `name`, built if needed (or rebuilt if its sources changed).
    pub fn get(&self, name: &str) -> Result<Arc<Function>, FunctionError> {
        check_name(name)?;
        let dir = self.functions_dir.join(name);
        let manifest = dir.join(MANIFEST);
        if !manifest.is_file() {
            return Err(FunctionError::Unknown {
                name: name.to_string(),
                manifest,
            });
        }
        if let Some(f) = self.fresh(name, &dir, false) {
            return Ok(f);
        }
        let gate = {
            let mut b = lock(&self.building);
            b.entry(name.to_string()).or_default().clone()
        };
        let _building = lock(&gate);
        // Another request may have built it while this one waited.
        if let Some(f) = self.fresh(name, &dir, true) {
            return Ok(f);
        }
        let built = self.build(name, &dir)?;
        // Taken after the build: building may write into the sources (cargo writes a
        // missing Cargo.lock), and that must not count as a change that retires this build.
        let fp = fingerprint(&dir);
        let function = Arc::new(Function {
            generation: self
                .next_generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..built
        });
        lock(&self.entries).insert(
            name.to_string(),
            Entry {
                function: function.clone(),
                fingerprint: fp,
                checked: Instant::now(),
            },
        );
        Ok(function)
    }

    /// The generation of the last build of `name`, if it was built.
    pub fn current_generation(&self, name: &str) -> Option<u64> {
        lock(&self.entries).get(name).map(|e| e.function.generation)
    }

    /// The cached build of `name` if its sources have not changed (checked at most once
    /// per [`CHECK_INTERVAL`] unless `force_check`).
    fn fresh(&self, name: &str, dir: &Path, force_check: bool) -> Option<Arc<Function>> {
        let mut entries = lock(&self.entries);
        let e = entries.get_mut(name)?;
        if !force_check && e.checked.elapsed() < CHECK_INTERVAL {
            return Some(e.function.clone());
        }
        let fp = fingerprint(dir);
        if fp == e.fingerprint && e.function.image.is_file() {
            e.checked = Instant::now();
            return Some(e.function.clone());
        }
        None
    }

    fn build(&self, name: &str, dir: &Path) -> Result<Function, FunctionError> {
        let out_dir = self.cache_dir.join(name);
        std::fs::create_dir_all(&out_dir).map_err(|source| FunctionError::CacheDir {
            path: out_dir.clone(),
            source,
        })?;
        let lock_path = self.cache_dir.join(format!("{name}.lock"));
        let _lock = FileLock::acquire(&lock_path, true).map_err(|source| FunctionError::Lock {
            name: name.to_string(),
            source,
        })?;
        // Through symlinks: a function's sources name their dependencies by relative paths.
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let options = kiln_guest_builder::BuildOptions {
            init: self.init.clone(),
        };
        build_with_builder(name, &dir, &out_dir, &options)
    }
}

/// Runs the guest builder and takes what the worker needs from its image and manifest.
fn build_with_builder(
    name: &str,
    dir: &Path,
    out_dir: &Path,
    options: &kiln_guest_builder::BuildOptions,
) -> Result<Function, FunctionError> {
    let image = kiln_guest_builder::build_function_with(dir, out_dir, options).map_err(|e| {
        let message = e.to_string();
        if is_manifest_error(&e) {
            FunctionError::BadManifest {
                name: name.to_string(),
                manifest: dir.join(MANIFEST),
                message,
            }
        } else {
            FunctionError::Build {
                name: name.to_string(),
                message,
            }
        }
    })?;
    let m = &image.manifest;
    let bad = |message: String| FunctionError::BadManifest {
        name: name.to_string(),
        manifest: dir.join(MANIFEST),
        message,
    };
    if m.name != name {
        return Err(bad(format!(
            "manifest {}: its name is {:?} but it lives in the directory {name:?}",
            dir.join(MANIFEST).display(),
            m.name
        )));
    }
    let linux = m.kind == kiln_guest_builder::Kind::Linux;
    Ok(Function {
        name: name.to_string(),
        image: image.path.clone(),
        kind: m.kind,
        hello_timeout: linux.then(|| {
            Duration::from_millis(
                m.hello_timeout_ms
                    .unwrap_or(kiln_guest_builder::DEFAULT_LINUX_HELLO_TIMEOUT_MS),
            )
        }),
        boot_args: linux.then(|| linux_boot_args(m)),
        memory_mib: m.memory_mib,
        vcpus: m.vcpus,
        timeout: Duration::from_millis(m.timeout_ms),
        concurrency: usize::try_from(m.concurrency)
            .map_err(|_| bad("concurrency too large".into()))?,
        max_event_bytes: usize::try_from(m.max_event_bytes)
            .map_err(|_| bad("max_event_bytes too large".into()))?,
        generation: 0,
        snapshot_start: m.snapshot_start,
    })
}

/// The kernel command line of a Linux function: the agent runs its executable
/// (`kiln.exec=`), or serves it as a Lambda function (`kiln.lambda=` its configuration).
fn linux_boot_args(m: &kiln_guest_builder::Manifest) -> String {
    let serve = if m.is_lambda() {
        format!("kiln.lambda={}", kiln_protocol::lambda_config::PATH)
    } else {
        format!("kiln.exec={}", kiln_guest_builder::LINUX_HANDLER_PATH)
    };
    format!("{LINUX_KERNEL_CMDLINE} {serve} kiln.name={}", m.name)
}

fn is_manifest_error(e: &kiln_guest_builder::BuildError) -> bool {
    e.is_manifest_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_command_line_matches_the_tested_one() {
        assert_eq!(LINUX_KERNEL_CMDLINE, kiln_tests::assets::KERNEL_CMDLINE);
    }

    #[test]
    fn linux_functions_boot_the_agent_for_their_kind() {
        let m =
            |text: &str| kiln_guest_builder::Manifest::parse(text, Path::new("/k.json")).unwrap();
        let exec = linux_boot_args(&m(
            r#"{"name": "l", "kind": "linux", "exec": "h", "memory_mib": 128}"#,
        ));
        assert_eq!(
            exec,
            format!("{LINUX_KERNEL_CMDLINE} kiln.exec=/fn/handler kiln.name=l")
        );
        let lambda = linux_boot_args(&m(
            r#"{"name": "p", "kind": "linux", "runtime": "provided", "memory_mib": 128}"#,
        ));
        assert_eq!(
            lambda,
            format!("{LINUX_KERNEL_CMDLINE} kiln.lambda=/fn/lambda.conf kiln.name=p")
        );
    }

    #[test]
    fn names_are_checked() {
        for ok in ["echo", "hash-2", "a_b", "X"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc", "a/b", "-x", "_x", "a b", &"x".repeat(41), "é"] {
            assert!(
                matches!(check_name(bad), Err(FunctionError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_functions_and_bad_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("kiln-reg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nomanifest")).unwrap();
        let r = Registry::new(dir.clone(), dir.join("cache"));
        for name in ["missing", "nomanifest", "../x"] {
            let e = r.get(name).unwrap_err();
            assert!(
                matches!(e, FunctionError::BadName(_) | FunctionError::Unknown { .. }),
                "{e}"
            );
            assert_eq!(e.code(), "unknown_function");
        }
        assert_eq!(r.names().unwrap(), Vec::<String>::new());
        std::fs::write(dir.join("nomanifest").join(MANIFEST), "{}").unwrap();
        assert_eq!(r.names().unwrap(), vec!["nomanifest".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprints_change_with_sources_but_not_target() {
        let dir = std::env::temp_dir().join(format!("kiln-fp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("a"), "1").unwrap();
        let a = fingerprint(&dir);
        std::fs::write(dir.join("target").join("junk"), "123").unwrap();
        assert_eq!(fingerprint(&dir), a);
        std::fs::write(dir.join("a"), "12").unwrap();
        assert_ne!(fingerprint(&dir), a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
