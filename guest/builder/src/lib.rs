//! kiln-guest-builder: builds Kiln's freestanding guests.
//!
//! * [`build_function`]: a function crate (`examples/functions/<name>`: a `no_std` binary on
//!   `kiln-runtime`, and its [`Manifest`] `kiln.json`) into a function image: the manifest is
//!   read and validated, the crate is built by a nested cargo ([`nested_build`]) with exactly
//!   the guest's flags, the ELF is audited ([`audit_elf`]) and copied to
//!   `<out_dir>/<name>.elf`.
//! * [`nested_build`] and [`audit_elf`] are also what tests/build.rs uses for the tiny test
//!   guest (guest/tiny).
//!
//! Guest code is built for the only installed target, `x86_64-unknown-linux-gnu`, with
//! [`GUEST_RUSTFLAGS`]: no PIE, no `+crt-static` and no SSE (the instruction emulator of some
//! hosts fails on SSE, see guest/tiny/README.md). The nested cargo runs from `/` in a cleared
//! environment so that no `.cargo/config.toml` of an enclosing tree and no variable of the
//! caller's build leaks into the guest's.

mod audit;
mod manifest;
mod nested;

pub use audit::{audit_elf, find_unsupported, AuditError};
pub use manifest::{Manifest, ManifestError, MANIFEST_FILE};
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

/// A built function image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The ELF to boot (`<out_dir>/<name>.elf`): `kernel_image_path` of the VMM config.
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
pub fn build_function(dir: &Path, out_dir: &Path) -> Result<Image, BuildError> {
    let manifest = Manifest::load(dir)?;
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
    fn function_link_arguments_use_the_runtime_script() {
        assert_eq!(FUNCTION_LINK_ARGS[0], "-Tkiln-runtime.ld");
        assert!(FUNCTION_LINK_ARGS.contains(&"-nostdlib"));
    }
}
