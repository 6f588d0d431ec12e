//! A Lambda function's initramfs (a Linux function with a `runtime`), in the order the kernel
//! unpacks it (a later member replaces an earlier one of the same name):
//!
//! 1. the `rootfs` tree, if any (e.g. a Lambda base image exported from a container: Python,
//!    libc, AWS's `/var/runtime/bootstrap`);
//! 2. `/dev`, `/proc`, `/sys`, `/tmp` (1777), `/var/task` with the `code` tree (default: the
//!    function's directory without `kiln.json`, `target/` and the `rootfs` directory), and
//!    for a `provided` runtime with an `exec`, that executable as `/var/task/bootstrap`;
//! 3. `/fn/lambda.conf`, the configuration kiln-init reads ([`config`], as
//!    `kiln_protocol::pairs`), and `/init` (kiln-init).
//!
//! Trees keep directories, regular files (with their permission bits) and symbolic links;
//! device nodes, FIFOs and sockets are left out; everything is owned by root.

use crate::cpio::CpioEntry;
use crate::manifest::Manifest;
use kiln_protocol::{lambda_config as key, pairs};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Where the code goes in the guest.
pub const TASK_ROOT: &str = "var/task";

/// The configuration kiln-init reads from [`kiln_protocol::lambda_config::PATH`].
pub fn config(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::new();
    let memory = m.memory_mib.to_string();
    let timeout = m.timeout_ms.to_string();
    let fields = [
        (key::NAME, m.name.as_str()),
        (key::RUNTIME, m.runtime.as_deref().unwrap_or("provided")),
        (key::HANDLER, m.handler.as_deref().unwrap_or("")),
        (key::MEMORY_MIB, memory.as_str()),
        (key::TIMEOUT_MS, timeout.as_str()),
    ];
    // The manifest's validation refused NUL in every value.
    for (k, v) in fields {
        let _ = pairs::put(&mut out, k, v);
    }
    for (name, value) in &m.environment {
        let _ = pairs::put(&mut out, key::ENV, &format!("{name}={value}"));
    }
    out
}

/// Appends the tree under `dir` as members under `prefix` (`""`: the archive's root), parents
/// first, names sorted; `skip` names are left out at the top level.
pub fn tree(
    dir: &Path,
    prefix: &str,
    skip: &[&str],
    out: &mut Vec<CpioEntry>,
) -> Result<(), String> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    names.sort();
    for name in names {
        let Some(text) = name.to_str() else {
            return Err(format!("{}: {name:?} is not a UTF-8 name", dir.display()));
        };
        if skip.contains(&text) {
            continue;
        }
        let path = dir.join(&name);
        let member = if prefix.is_empty() {
            text.to_string()
        } else {
            format!("{prefix}/{text}")
        };
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let perm = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| format!("cannot read the link {}: {e}", path.display()))?;
            let target = target
                .to_str()
                .ok_or_else(|| format!("{}: the link's target is not UTF-8", path.display()))?;
            out.push(CpioEntry::symlink(&member, target));
        } else if kind.is_dir() {
            out.push(CpioEntry::dir_with(&member, perm));
            tree(&path, &member, &[], out)?;
        } else if kind.is_file() {
            let data =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            out.push(CpioEntry::file(&member, perm, data));
        }
    }
    Ok(())
}

/// Every member of the initramfs but `/init` (see the module's text): the root file system,
/// then [`function_entries`]. `bootstrap` is the `exec` of a `provided` function.
pub fn entries(
    dir: &Path,
    m: &Manifest,
    bootstrap: Option<Vec<u8>>,
) -> Result<Vec<CpioEntry>, String> {
    let mut out = Vec::new();
    if let Some(rootfs) = &m.rootfs {
        let root = dir.join(rootfs);
        if !root.is_dir() {
            return Err(format!(
                "field rootfs = {rootfs:?}: {} is not a directory (a {} function needs a root file system with its runtime; see docs/worker.md)",
                root.display(),
                m.runtime.as_deref().unwrap_or("Lambda")
            ));
        }
        tree(&root, "", &[], &mut out)?;
    }
    out.extend(function_entries(dir, m, bootstrap)?);
    Ok(out)
}

/// The function's own members: the directories init needs, `/var/task` (the code, and the
/// bootstrap) and `/fn/lambda.conf`.
pub fn function_entries(
    dir: &Path,
    m: &Manifest,
    bootstrap: Option<Vec<u8>>,
) -> Result<Vec<CpioEntry>, String> {
    let mut out = Vec::new();
    for d in ["dev", "proc", "sys", "var", "fn"] {
        out.push(CpioEntry::dir(d));
    }
    out.push(CpioEntry::dir_with("tmp", 0o1777));
    out.push(CpioEntry::dir(TASK_ROOT));
    let code = m.code.as_deref().unwrap_or(".");
    let code_dir = dir.join(code);
    let rootfs_top = m.rootfs.as_deref().filter(|r| !r.contains('/'));
    let mut skip = vec![crate::MANIFEST_FILE, "target"];
    skip.extend(rootfs_top);
    tree(&code_dir, TASK_ROOT, &skip, &mut out)?;
    if let Some(b) = bootstrap {
        out.push(CpioEntry::file(&format!("{TASK_ROOT}/bootstrap"), 0o755, b));
    }
    out.push(CpioEntry::file(
        key::PATH.trim_start_matches('/'),
        0o444,
        config(m),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

    #[test]
    fn the_configuration_names_runtime_handler_and_environment() {
        let m = Manifest::parse(
            r#"{"name": "p", "kind": "linux", "runtime": "python3.12", "handler": "app.handler",
                "rootfs": "r", "memory_mib": 256, "timeout_ms": 5000, "environment": {"B": "2", "A": "x=1"}}"#,
            Path::new("/k.json"),
        )
        .unwrap();
        let c = config(&m);
        let got: Vec<(&str, &str)> = pairs::iter(&c).map(Result::unwrap).collect();
        assert_eq!(
            got,
            [
                ("name", "p"),
                ("runtime", "python3.12"),
                ("handler", "app.handler"),
                ("memory-mib", "256"),
                ("timeout-ms", "5000"),
                ("env", "A=x=1"),
                ("env", "B=2"),
            ]
        );
    }

    #[test]
    fn trees_keep_files_links_and_modes_and_leave_out_what_is_skipped() {
        let dir = std::env::temp_dir().join(format!("kiln-lambda-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg/sub")).unwrap();
        std::fs::create_dir_all(dir.join("target/x")).unwrap();
        std::fs::create_dir_all(dir.join("rootfs/usr/bin")).unwrap();
        std::fs::write(dir.join("app.py"), "def handler(e, c): return e\n").unwrap();
        std::fs::write(dir.join("kiln.json"), "{}").unwrap();
        std::fs::write(dir.join("pkg/sub/m.py"), "x = 1\n").unwrap();
        std::fs::write(dir.join("rootfs/usr/bin/python3"), "elf").unwrap();
        std::fs::set_permissions(
            dir.join("rootfs/usr/bin/python3"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.join("rootfs/bin")).unwrap();
        let m = Manifest::parse(
            r#"{"name": "p", "kind": "linux", "runtime": "python3.12", "handler": "app.handler",
                "rootfs": "rootfs", "memory_mib": 256}"#,
            Path::new("/k.json"),
        )
        .unwrap();
        let members = entries(&dir, &m, None).unwrap();
        let find = |n: &str| members.iter().find(|e| e.name == n);
        assert_eq!(find("bin").unwrap().mode, S_IFLNK | 0o777);
        assert_eq!(find("bin").unwrap().data, b"usr/bin");
        assert_eq!(find("usr/bin/python3").unwrap().mode, S_IFREG | 0o755);
        assert_eq!(find("tmp").unwrap().mode, S_IFDIR | 0o1777);
        assert_eq!(
            find("var/task/app.py").unwrap().data,
            b"def handler(e, c): return e\n"
        );
        assert_eq!(
            find("var/task/pkg/sub/m.py").unwrap().mode & S_IFMT,
            S_IFREG
        );
        for absent in ["var/task/kiln.json", "var/task/target", "var/task/rootfs"] {
            assert!(find(absent).is_none(), "{absent}");
        }
        let conf = find("fn/lambda.conf").unwrap();
        assert_eq!(pairs::get(&conf.data, "handler"), Some("app.handler"));
        // Parents come before their children.
        for (i, e) in members.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                let at = members.iter().position(|p| p.name == parent);
                assert!(at.is_some_and(|p| p < i), "{} before its parent", e.name);
            }
        }
        let no_root = Manifest {
            rootfs: Some("missing".into()),
            ..m
        };
        let e = entries(&dir, &no_root, None).unwrap_err();
        assert!(e.contains("field rootfs = \"missing\""), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
