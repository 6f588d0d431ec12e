//! Paths: host paths (`--exec-file`, `--chroot-base-dir`, bind sources), paths inside the
//! jail (bind targets, the profile's extra Landlock paths), the `--bind-ro`/`--bind-rw`
//! entries and the profile's `landlock` section.

use std::path::{Component, Path, PathBuf};

use kiln_argv::Args;

use super::error::{ArgsError, IoErrorEq};
use super::flags::DEFAULT_CHROOT_BASE;
use crate::profile::Profile;

/// A `--bind-ro`/`--bind-rw` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Canonical host path.
    pub host: PathBuf,
    /// Absolute path inside the jail.
    pub jail: PathBuf,
    pub writable: bool,
    pub is_dir: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LandlockConfig {
    /// Extra jail paths and whether they are writable.
    pub paths: Vec<(PathBuf, bool)>,
    pub tcp_connect: Vec<u16>,
    pub tcp_bind: Vec<u16>,
}

/// A host path: non-empty, no NUL, no `..` component.
pub fn check_host_path(flag: &str, value: &str) -> Result<(), ArgsError> {
    let err = |reason| ArgsError::InvalidPath {
        flag: flag.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("empty path"));
    }
    if value.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    if value.split('/').any(|c| c == "..") {
        return Err(err("contains a `..` component"));
    }
    Ok(())
}

/// The components of a relative path are normalised: none is empty, `.` or `..`.
pub(super) fn check_components(relative: &str) -> Result<(), &'static str> {
    for c in relative.split('/') {
        match c {
            "" => return Err("contains an empty component"),
            "." => return Err("contains a `.` component"),
            ".." => return Err("contains a `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// A path inside the jail: absolute, normalised (no `.`, `..` or empty component), not `/`.
pub fn check_jail_path(field: &str, value: &str) -> Result<PathBuf, ArgsError> {
    let err = |reason| ArgsError::InvalidPath {
        flag: field.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.contains('\0') {
        return Err(err("contains a NUL byte"));
    }
    let Some(rest) = value.strip_prefix('/') else {
        return Err(err("must be absolute (a path inside the jail)"));
    };
    if rest.is_empty() {
        return Err(err("cannot be the jail's root"));
    }
    check_components(rest).map_err(err)?;
    Ok(PathBuf::from(value))
}

/// The VMM's file name is also its name in the jail's root: it cannot take the place of
/// the jail's own entries.
pub(super) fn exec_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != "dev"
        && name != "run"
        && !name.ends_with(".pid")
        && !name.contains('\0')
}

/// The jail's own top-level names, which binds and extra paths cannot replace.
fn reserved_top(exec_name: &str, top: &str) -> bool {
    top == "dev" || top == "run" || top == exec_name || top == format!("{exec_name}.pid")
}

fn first_component(p: &Path) -> String {
    p.components()
        .find_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `--bind-ro HOST:JAIL` and `--bind-rw HOST:JAIL`: checked, the host side resolved.
pub(super) fn bind_config(argv: &Args, exec_name: &str) -> Result<Vec<Bind>, ArgsError> {
    let mut binds: Vec<Bind> = Vec::new();
    let entries = argv
        .multi("bind-ro")
        .iter()
        .map(|e| ("bind-ro", false, e))
        .chain(argv.multi("bind-rw").iter().map(|e| ("bind-rw", true, e)));
    for (flag, writable, entry) in entries {
        let bad = |reason| ArgsError::InvalidPath {
            flag: format!("--{flag}"),
            value: entry.clone(),
            reason,
        };
        let (host, jail) = entry
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:JAIL"))?;
        // Errors show the whole entry.
        let whole = |e: ArgsError| match e {
            ArgsError::InvalidPath { reason, .. } => bad(reason),
            other => other,
        };
        check_host_path(&format!("--{flag}"), host).map_err(whole)?;
        let jail = check_jail_path(&format!("--{flag}"), jail).map_err(whole)?;
        if reserved_top(exec_name, &first_component(&jail)) {
            return Err(bad(
                "the jail path would replace the jail's own /dev, /run or VMM binary",
            ));
        }
        for other in &binds {
            if other.jail.starts_with(&jail) || jail.starts_with(&other.jail) {
                return Err(bad("the jail path overlaps another bind"));
            }
        }
        let host = std::fs::canonicalize(host).map_err(|e| ArgsError::Resolve {
            flag,
            path: PathBuf::from(host),
            source: IoErrorEq(e),
        })?;
        let meta = std::fs::metadata(&host).map_err(|e| ArgsError::Resolve {
            flag,
            path: host.clone(),
            source: IoErrorEq(e),
        })?;
        if !meta.is_file() && !meta.is_dir() {
            return Err(ArgsError::BindType { flag, path: host });
        }
        binds.push(Bind {
            host,
            jail,
            writable,
            is_dir: meta.is_dir(),
        });
    }
    Ok(binds)
}

/// The profile's `landlock` section: extra paths (`ro`/`rw`) and TCP ports.
pub(super) fn landlock_config(profile: &Profile) -> Result<LandlockConfig, ArgsError> {
    let mut paths = Vec::new();
    for (i, p) in profile.landlock.paths.iter().enumerate() {
        let field = format!("landlock.paths[{i}].path");
        let path = check_jail_path(&field, &p.path)?;
        let writable = match p.access.as_str() {
            "ro" => false,
            "rw" => true,
            other => {
                return Err(ArgsError::InvalidPath {
                    flag: format!("landlock.paths[{i}].access"),
                    value: other.to_owned(),
                    reason: "expected ro or rw",
                })
            }
        };
        paths.push((path, writable));
    }
    for (field, ports) in [
        ("landlock.tcp_connect", &profile.landlock.tcp_connect),
        ("landlock.tcp_bind", &profile.landlock.tcp_bind),
    ] {
        if ports.contains(&0) {
            return Err(ArgsError::InvalidPath {
                flag: field.into(),
                value: "0".into(),
                reason: "port 0 is not a port",
            });
        }
    }
    Ok(LandlockConfig {
        paths,
        tcp_connect: profile.landlock.tcp_connect.clone(),
        tcp_bind: profile.landlock.tcp_bind.clone(),
    })
}

/// Extra Landlock paths must be somewhere the jailer puts files: under a bind or `/run`.
pub(super) fn check_landlock_paths(
    landlock: &LandlockConfig,
    binds: &[Bind],
) -> Result<(), ArgsError> {
    for (i, (path, writable)) in landlock.paths.iter().enumerate() {
        let top = first_component(path);
        let under_bind = binds
            .iter()
            .any(|b| path.starts_with(&b.jail) && (b.writable || !writable));
        // (Binds never sit on the reserved names, so `under_bind` excludes them too.)
        if !(under_bind || top == "run") {
            return Err(ArgsError::InvalidPath {
                flag: format!("landlock.paths[{i}].path"),
                value: path.display().to_string(),
                reason: "must be under /run or under a bind of the same or wider access",
            });
        }
    }
    Ok(())
}

/// `--exec-file`: a regular file, or a symbolic link to one (Firecracker's meaning: the file
/// it resolves to, whose name names the jail's directory and the VMM in it); returns its
/// canonical path and name. The jailer opens that canonical path without following links.
pub(super) fn resolve_exec_file(exec: &str) -> Result<(PathBuf, String), ArgsError> {
    let given = PathBuf::from(exec);
    let canonical = match std::fs::canonicalize(&given) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ArgsError::ExecFileMissing { path: given })
        }
        Err(e) => {
            return Err(ArgsError::Resolve {
                flag: "exec-file",
                path: given,
                source: IoErrorEq(e),
            })
        }
    };
    let meta = std::fs::metadata(&canonical).map_err(|e| ArgsError::Resolve {
        flag: "exec-file",
        path: canonical.clone(),
        source: IoErrorEq(e),
    })?;
    if !meta.is_file() {
        return Err(ArgsError::ExecFileNotFile { path: canonical });
    }
    let name = exec_name_of(&canonical)?;
    Ok((canonical, name))
}

/// The VMM's name in the jail: the file name of its canonical path.
pub(super) fn exec_name_of(canonical: &Path) -> Result<String, ArgsError> {
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| exec_name_ok(n))
        .map(str::to_owned)
        .ok_or_else(|| ArgsError::ExecFileName {
            path: canonical.to_path_buf(),
            name: canonical
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })
}

/// `--chroot-base-dir` (default [`DEFAULT_CHROOT_BASE`]), canonical: a directory, or a path
/// to one that does not exist yet. Nothing is made here (a refused command line leaves
/// nothing behind): a missing base is made by step 2 when a jail is about to be made under
/// it (`jail_dir::claim`), and until then it is its nearest existing ancestor, canonical,
/// with the missing names after it.
pub(super) fn resolve_chroot_base(value: Option<&str>) -> Result<PathBuf, ArgsError> {
    let given = value.unwrap_or(DEFAULT_CHROOT_BASE);
    check_host_path("--chroot-base-dir", given)?;
    let base = PathBuf::from(given);
    let resolve_err = |e: std::io::Error| ArgsError::Resolve {
        flag: "chroot-base-dir",
        path: base.clone(),
        source: IoErrorEq(e),
    };
    // The longest leading part of the path that exists.
    let components: Vec<Component<'_>> = base.components().collect();
    let mut existing = PathBuf::new();
    let mut missing_from = components.len();
    for (i, c) in components.iter().enumerate() {
        let next = existing.join(c);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => existing = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing_from = i;
                break;
            }
            Err(e) => return Err(resolve_err(e)),
        }
    }
    let mut canonical = match existing.as_os_str().is_empty() {
        true => std::env::current_dir(),
        false => std::fs::canonicalize(&existing),
    }
    .map_err(resolve_err)?;
    if !canonical.is_dir() {
        return Err(ArgsError::NotADirectory {
            flag: "chroot-base-dir",
            path: canonical,
        });
    }
    // Only names follow (`check_host_path` refused `..`; `.` is no component after the
    // first).
    for c in &components[missing_from..] {
        if let Component::Normal(name) = c {
            canonical.push(name);
        }
    }
    Ok(canonical)
}
