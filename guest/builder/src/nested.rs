//! The nested `cargo build --release` of a freestanding guest crate.
//!
//! The guest is built for the only installed target with [`GUEST_RUSTFLAGS`] (plus the
//! caller's link arguments) given as `CARGO_ENCODED_RUSTFLAGS`, which replaces any other
//! rustflags. Cargo runs from `/` in a cleared environment (only [`KEPT_ENV`], the caller's
//! `CARGO`/`RUSTC` and the build's own variables), so that no `.cargo/config.toml` of the
//! enclosing tree (Kiln's adds `+crt-static` and a default target) and no variable of an outer
//! build reaches the guest. The target directory is the caller's, so that an outer cargo's
//! lock is never waited on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The only target installed; named explicitly so that rustflags skip build scripts.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Exactly the rustflags of freestanding guests: no PIE (linked at a fixed address), no
/// `+crt-static` (no libc), and no SSE (the emulator of some hosts fails on SSE arithmetic
/// such as `xorps`, which LLVM uses to zero memory). Defined in kiln-guest-flags
/// (guest/flags), whose check every guest's build script runs; rustc warns that disabling
/// SSE2 is being phased out for this target, see guest/tiny/README.md for the fallback.
pub use kiln_guest_flags::RUSTFLAGS as GUEST_RUSTFLAGS;

/// Environment variables passed on to the nested cargo; everything else is cleared.
pub const KEPT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "TMPDIR",
];

/// Lines of cargo's error output kept in a [`NestedBuildError::Failed`].
const STDERR_TAIL_LINES: usize = 60;

/// One nested build.
#[derive(Debug, Clone)]
pub struct NestedBuild {
    /// The guest crate's Cargo.toml.
    pub manifest_path: PathBuf,
    /// Cargo's target directory for it.
    pub target_dir: PathBuf,
    /// The complete rustflags: [`GUEST_RUSTFLAGS`] and any link arguments.
    pub rustflags: Vec<String>,
    /// Extra environment variables of the build.
    pub env: Vec<(String, String)>,
    /// `--locked` (the crate's Cargo.lock must be up to date).
    pub locked: bool,
    /// `-j N`.
    pub jobs: Option<u32>,
}

/// Why the nested build failed.
#[derive(Debug, thiserror::Error)]
pub enum NestedBuildError {
    #[error("cannot run {cargo:?}: {source}")]
    Spawn {
        cargo: OsString,
        source: std::io::Error,
    },
    #[error("cargo build of {manifest} failed ({status}); its last output lines:\n{stderr}")]
    Failed {
        manifest: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cargo build of {manifest} succeeded but named no executable (is it a binary crate?)")]
    NoExecutable { manifest: PathBuf },
}

/// Runs the build; returns the path of the executable it produced.
pub fn nested_build(b: &NestedBuild) -> Result<PathBuf, NestedBuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.env_clear();
    for name in KEPT_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    // The same compiler as an outer build (cargo sets RUSTC for build scripts).
    if let Some(rustc) = std::env::var_os("RUSTC") {
        cmd.env("RUSTC", rustc);
    }
    cmd.envs(b.env.iter().map(|(k, v)| (k, v)))
        .env("CARGO_ENCODED_RUSTFLAGS", b.rustflags.join("\x1f"))
        .current_dir("/")
        .args([
            "build",
            "--release",
            "--offline",
            "--message-format=json-render-diagnostics",
            "--target",
            TRIPLE,
        ]);
    if b.locked {
        cmd.arg("--locked");
    }
    if let Some(j) = b.jobs {
        cmd.arg(format!("-j{j}"));
    }
    cmd.arg("--manifest-path")
        .arg(&b.manifest_path)
        .arg("--target-dir")
        .arg(&b.target_dir);
    let out = cmd.output().map_err(|source| NestedBuildError::Spawn {
        cargo: cargo.clone(),
        source,
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
        return Err(NestedBuildError::Failed {
            manifest: b.manifest_path.clone(),
            status: out.status,
            stderr: tail,
        });
    }
    executable_from_messages(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        NestedBuildError::NoExecutable {
            manifest: b.manifest_path.clone(),
        }
    })
}

/// The last `executable` of a `compiler-artifact` message in cargo's JSON output.
fn executable_from_messages(stdout: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m.get("reason").and_then(|r| r.as_str()) == Some("compiler-artifact"))
        .filter_map(|m| m.get("executable")?.as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_read_from_cargos_messages() {
        let out = r#"{"reason":"compiler-artifact","target":{"name":"kiln_runtime"},"executable":null}
{"reason":"build-script-executed","package_id":"x"}
{"reason":"compiler-artifact","target":{"name":"echo"},"executable":"/t/x86_64-unknown-linux-gnu/release/echo"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(out),
            Some(PathBuf::from("/t/x86_64-unknown-linux-gnu/release/echo"))
        );
        assert_eq!(executable_from_messages("garbage\n{}"), None);
    }

    #[test]
    fn guest_flags_are_exact() {
        assert_eq!(
            GUEST_RUSTFLAGS.join(" "),
            "-C relocation-model=static -C target-feature=-crt-static,-sse,-sse2"
        );
    }
}
