//! kiln-guest-builder: builds Kiln's freestanding guests.
//!
//! * [`build_function`]: a function crate (`examples/functions/<name>`: a `no_std` binary on
//!   `kiln-runtime`, and its [`Manifest`] `kiln.json`) into a function image: the manifest is
//!   read and validated, the crate is built by a nested cargo ([`nested_build`]) with exactly
//!   the guest's flags, the ELF is audited ([`audit_elf`]) and copied to
//!   `<out_dir>/<name>.elf`.
//! * [`build_function_with`] also builds Linux functions (`"kind": "linux"` in the manifest):
//!   the handler executable (built first by cargo, static, when the directory has a
//!   Cargo.toml) and kiln-init become an uncompressed newc initramfs
//!   `<out_dir>/<name>.cpio` ([`write_newc`]) holding `/init`, `/fn/handler` and the
//!   directories init mounts on (`/dev`, `/proc`, `/sys`). A Lambda function (a Linux
//!   function with a `runtime`) gets its code in `/var/task`, its root file system, and its
//!   configuration instead ([`lambda`]).
//! * [`nested_build`] and [`audit_elf`] are also what tests/build.rs uses for the tiny test
//!   guest (guest/tiny).
//!
//! Guest code is built for the only installed target, `x86_64-unknown-linux-gnu`, with
//! [`GUEST_RUSTFLAGS`] (from kiln-guest-flags, whose check every guest's build script runs): no
//! PIE, no `+crt-static` and no SSE (the instruction emulator of some hosts fails on SSE, see
//! guest/tiny/README.md). The nested cargo runs from `/` in a cleared
//! environment so that no `.cargo/config.toml` of an enclosing tree and no variable of the
//! caller's build leaks into the guest's.

mod audit;
mod cpio;
pub mod lambda;
mod manifest;
mod nested;

pub use audit::{audit_elf, find_unsupported, AuditError};
pub use cpio::{read_newc, write_newc, CpioEntry, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
pub use manifest::{
    Kind, Manifest, ManifestError, DEFAULT_LINUX_HELLO_TIMEOUT_MS, LAMBDA_RUNTIMES, MANIFEST_FILE,
    MIN_LINUX_MEMORY_MIB,
};
pub use nested::{nested_build, NestedBuild, NestedBuildError, GUEST_RUSTFLAGS, TRIPLE};

use std::path::{Path, PathBuf};

/// Link arguments of function images: kiln-runtime's linker script (found through the
/// library search path that kiln-runtime's build script adds) and a static, freestanding
/// link.
pub const FUNCTION_LINK_ARGS: &[&str] = &[
    "-Tkiln-runtime.ld",
    "-nostdlib",
    "-static",
    "-Wl,--build-id=none",
    "-Wl,-z,norelro",
    "-Wl,--no-eh-frame-hdr",
];

/// Environment variables the function's `kiln_runtime::function!` reads at compile time.
pub const ENV_FUNCTION_NAME: &str = "KILN_FUNCTION_NAME";
pub const ENV_MAX_EVENT_BYTES: &str = "KILN_MAX_EVENT_BYTES";

/// Where a Linux function's handler is in its initramfs (`kiln.exec=` of the guest).
pub const LINUX_HANDLER_PATH: &str = "/fn/handler";
/// Largest executable (a Linux function's `exec`, kiln-init) put into an initramfs: the whole
/// initramfs must fit in the guest's memory (at most 3 GiB) with the kernel.
pub const MAX_EXEC_BYTES: u64 = 1 << 30;
/// Rust flags of a Linux function's handler crate: a static executable (the initramfs has
/// no libc).
pub const LINUX_HANDLER_RUSTFLAGS: &[&str] = &["-C", "target-feature=+crt-static"];

/// How to build functions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// The kiln-init binary (static), `/init` of a Linux function's initramfs. Needed only
    /// for Linux functions.
    pub init: Option<PathBuf>,
}

/// A built function image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The ELF to boot (`<out_dir>/<name>.elf`): `kernel_image_path` of the VMM config. For a
    /// Linux function: its initramfs (`<out_dir>/<name>.cpio`), the VMM's `initrd_path`.
    pub path: PathBuf,
    /// The function's validated manifest.
    pub manifest: Manifest,
}

/// Why a function could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("function directory {dir}: no Cargo.toml there")]
    NoCargoToml { dir: PathBuf },
    #[error("output directory {path}: {source}")]
    OutDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building the function {name}: {source}")]
    Build {
        name: String,
        source: NestedBuildError,
    },
    #[error("function {name}: {source}")]
    Audit { name: String, source: AuditError },
    #[error("Linux function {name}: {message}")]
    Linux { name: String, message: String },
    #[error("copying the image {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

impl BuildError {
    /// True when the manifest (not the code or the toolchain) is what is wrong.
    pub fn is_manifest_error(&self) -> bool {
        matches!(self, BuildError::Manifest(_))
    }
}

/// Builds the function in `dir` into `<out_dir>/<name>.elf`, with cargo's files under
/// `<out_dir>/target` (kept between builds: a rebuild of an unchanged function is a no-op).
/// Linux functions need [`build_function_with`] and the kiln-init binary.
pub fn build_function(dir: &Path, out_dir: &Path) -> Result<Image, BuildError> {
    build_function_with(dir, out_dir, &BuildOptions::default())
}

/// As [`build_function`], and builds Linux functions into `<out_dir>/<name>.cpio`.
pub fn build_function_with(
    dir: &Path,
    out_dir: &Path,
    options: &BuildOptions,
) -> Result<Image, BuildError> {
    let manifest = Manifest::load(dir)?;
    if manifest.kind == Kind::Linux {
        return build_linux(dir, out_dir, manifest, options);
    }
    let cargo_toml = dir.join("Cargo.toml");
    if !cargo_toml.is_file() {
        return Err(BuildError::NoCargoToml {
            dir: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::OutDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut rustflags: Vec<String> = GUEST_RUSTFLAGS.iter().map(|s| s.to_string()).collect();
    for arg in FUNCTION_LINK_ARGS {
        rustflags.push("-C".into());
        rustflags.push(format!("link-arg={arg}"));
    }
    let build = NestedBuild {
        manifest_path: cargo_toml,
        target_dir: out_dir.join("target"),
        rustflags,
        env: vec![
            (ENV_FUNCTION_NAME.into(), manifest.name.clone()),
            (
                ENV_MAX_EVENT_BYTES.into(),
                manifest.max_event_bytes.to_string(),
            ),
        ],
        locked: false,
        jobs: None,
    };
    let elf = nested_build(&build).map_err(|source| BuildError::Build {
        name: manifest.name.clone(),
        source,
    })?;
    audit_elf(&elf).map_err(|source| BuildError::Audit {
        name: manifest.name.clone(),
        source,
    })?;
    let path = out_dir.join(format!("{}.elf", manifest.name));
    // Copy then rename: an instance booting the previous image keeps reading its own file.
    let tmp = out_dir.join(format!(".{}.elf.tmp", manifest.name));
    std::fs::copy(&elf, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| BuildError::Copy {
            from: elf.clone(),
            to: path.clone(),
            source,
        })?;
    Ok(Image { path, manifest })
}

/// Why `bytes` is not a static x86-64 ELF executable, if it is not.
fn not_static_elf(bytes: &[u8]) -> Option<&'static str> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    if bytes.get(..5) != Some(b"\x7fELF\x02") || u16_at(18) != Some(62) {
        return Some("not an x86-64 ELF executable");
    }
    const PT_INTERP: u32 = 3;
    let phoff = u64_at(0x20).and_then(|o| usize::try_from(o).ok());
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, u16_at(0x36), u16_at(0x38)) else {
        return Some("a truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        match u32_at(phoff + i * usize::from(phentsize)) {
            None => return Some("truncated ELF program headers"),
            Some(PT_INTERP) => {
                return Some("dynamically linked (it names an interpreter); the guest has no libc")
            }
            Some(_) => {}
        }
    }
    None
}

fn build_linux(
    dir: &Path,
    out_dir: &Path,
    manifest: Manifest,
    options: &BuildOptions,
) -> Result<Image, BuildError> {
    let name = manifest.name.clone();
    let fail = |message: String| BuildError::Linux {
        name: name.clone(),
        message,
    };
    let init = options.init.as_ref().ok_or_else(|| {
        fail("building it needs the kiln-init binary (`kiln --init PATH`; `cargo build --release -p kiln-init`)".into())
    })?;
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::OutDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let cargo_toml = dir.join("Cargo.toml");
    if cargo_toml.is_file() {
        let build = NestedBuild {
            manifest_path: cargo_toml,
            target_dir: dir.join("target"),
            rustflags: LINUX_HANDLER_RUSTFLAGS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            env: Vec::new(),
            locked: false,
            jobs: None,
        };
        nested_build(&build).map_err(|source| BuildError::Build {
            name: name.clone(),
            source,
        })?;
    }
    // A static ELF unless a root file system brings the libraries (and interpreters).
    let check =
        |what: &str, path: &Path, bytes: Vec<u8>, any_file: bool| match not_static_elf(&bytes)
            .filter(|_| !any_file)
        {
            Some(why) => Err(fail(format!("{what} ({}): {why}", path.display()))),
            None => Ok(bytes),
        };
    let exec = match manifest.exec.as_deref() {
        Some(rel) => {
            // The function's directory is the tenant's: a link there could pull any host
            // file (or /dev/zero) into the image, so none is followed, and the read is
            // bounded and cannot block.
            let what = format!("field exec = {rel:?}");
            let path = dir.join(rel);
            let bytes = kiln_hostfs::read_beneath(dir, Path::new(rel), MAX_EXEC_BYTES)
                .map_err(|e| fail(format!("{what} ({}): cannot read it: {e}", path.display())))?;
            Some(check(&what, &path, bytes, manifest.rootfs.is_some())?)
        }
        None => None,
    };
    let what = "the kiln-init binary (kiln --init PATH)";
    let init_bytes = kiln_hostfs::read_bytes(init, MAX_EXEC_BYTES)
        .map_err(|e| fail(format!("{what} ({}): cannot read it: {e}", init.display())))?;
    let init_bytes = check(what, init, init_bytes, false)?;
    let mut entries = if manifest.is_lambda() {
        lambda::entries(dir, &manifest, exec).map_err(fail)?
    } else {
        vec![
            CpioEntry::dir("dev"),
            CpioEntry::dir("proc"),
            CpioEntry::dir("sys"),
            CpioEntry::dir("fn"),
            CpioEntry::file(
                LINUX_HANDLER_PATH.trim_start_matches('/'),
                0o755,
                exec.unwrap_or_default(),
            ),
        ]
    };
    // Last: no root file system's /init replaces kiln-init.
    entries.push(CpioEntry::file("init", 0o755, init_bytes));
    let path = out_dir.join(format!("{name}.cpio"));
    let tmp = out_dir.join(format!(".{name}.cpio.tmp"));
    let mut bytes = Vec::new();
    write_newc(&mut bytes, &entries).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| BuildError::Copy {
            from: tmp.clone(),
            to: path.clone(),
            source,
        })?;
    Ok(Image { path, manifest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-builder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn manifest_problems_come_first_and_are_flagged() {
        let dir = scratch("bad-manifest");
        std::fs::write(dir.join(MANIFEST_FILE), r#"{"name": "f", "vcpus": 2}"#).unwrap();
        let e = build_function(&dir, &dir.join("out")).unwrap_err();
        assert!(e.is_manifest_error(), "{e}");
        assert!(e.to_string().contains("field vcpus = 2"), "{e}");

        std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
        let e = build_function(&dir, &dir.join("out")).unwrap_err();
        assert!(
            e.is_manifest_error() && e.to_string().contains("cannot read"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_function_needs_a_cargo_toml() {
        let dir = scratch("no-cargo");
        std::fs::write(dir.join(MANIFEST_FILE), r#"{"name": "f"}"#).unwrap();
        let e = build_function(&dir, &dir.join("out")).unwrap_err();
        assert!(matches!(e, BuildError::NoCargoToml { .. }), "{e}");
        assert!(!e.is_manifest_error());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn linux_functions_need_init_and_a_static_exec() {
        let dir = scratch("linux");
        std::fs::write(
            dir.join(MANIFEST_FILE),
            r#"{"name": "l", "kind": "linux", "exec": "h", "memory_mib": 128}"#,
        )
        .unwrap();
        let out = dir.join("out");
        let e = build_function(&dir, &out).unwrap_err().to_string();
        assert!(e.contains("needs the kiln-init binary"), "{e}");
        let init = std::env::current_exe().unwrap();
        let opts = BuildOptions {
            init: Some(init.clone()),
        };
        let e = build_function_with(&dir, &out, &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exec = \"h\"") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(dir.join("h"), b"#!/bin/sh\n").unwrap();
        let e = build_function_with(&dir, &out, &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an x86-64 ELF"), "{e}");
        // The test executable itself stands for a static handler and init (the workspace
        // links statically, .cargo/config.toml); a dynamic one is refused.
        std::fs::copy(&init, dir.join("h")).unwrap();
        match not_static_elf(&std::fs::read(&init).unwrap()) {
            None => {
                let image = build_function_with(&dir, &out, &opts).unwrap();
                assert_eq!(image.path, out.join("l.cpio"));
                let bytes = std::fs::read(&image.path).unwrap();
                assert!(bytes.starts_with(b"070701"));
                let text = String::from_utf8_lossy(&bytes);
                for member in [
                    "dev\0",
                    "proc\0",
                    "sys\0",
                    "init\0",
                    "fn/handler\0",
                    "TRAILER!!!\0",
                ] {
                    assert!(text.contains(member), "{member:?}");
                }
            }
            Some(why) => {
                let e = build_function_with(&dir, &out, &opts)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(why), "{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Found by reading (issue 23): `exec` was read following links and without a limit, so
    /// a link in the function's directory pulled any host file into the image, and one to
    /// `/dev/zero` never ended. A FIFO would have blocked the build.
    #[test]
    fn exec_is_never_read_through_a_link_nor_from_a_fifo_or_device() {
        let dir = scratch("linux-exec-links");
        let secret = dir.join("secret");
        std::fs::write(&secret, b"host file").unwrap();
        let fn_dir = dir.join("f");
        std::fs::create_dir_all(fn_dir.join("bin")).unwrap();
        let opts = BuildOptions {
            init: Some(std::env::current_exe().unwrap()),
        };
        std::os::unix::fs::symlink(&secret, fn_dir.join("bin/h")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", fn_dir.join("zero")).unwrap();
        std::os::unix::fs::symlink(&dir, fn_dir.join("up")).unwrap();
        let fifo = std::ffi::CString::new(fn_dir.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path; it only creates a file.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (exec, why) in [
            ("bin/h", "symbolic link"),
            ("zero", "symbolic link"),
            ("up/secret", "symbolic link"),
            ("fifo", "not a regular file"),
        ] {
            std::fs::write(
                fn_dir.join(MANIFEST_FILE),
                format!(r#"{{"name": "l", "kind": "linux", "exec": "{exec}", "memory_mib": 128}}"#),
            )
            .unwrap();
            let started = std::time::Instant::now();
            let e = build_function_with(&fn_dir, &dir.join("out"), &opts)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("exec = \"{exec}\"")) && e.contains(why),
                "{exec}: {e}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{exec}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn function_link_arguments_use_the_runtime_script() {
        assert_eq!(FUNCTION_LINK_ARGS[0], "-Tkiln-runtime.ld");
        assert!(FUNCTION_LINK_ARGS.contains(&"-nostdlib"));
    }
}
