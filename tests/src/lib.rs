//! Test kit shared by Kiln's workspace-level suites.
//!
//! Every precondition a test needs (root, `/dev/kvm`, a built binary, a guest asset) is
//! checked by a `require_*` function that panics with a message naming what is missing and
//! how to get it: a test never passes silently because its environment was incomplete.

pub mod api;
pub mod assets;
pub mod elf;
pub mod errno;
pub mod ext4;
pub mod fdpass;
pub mod initramfs;
pub mod io;
pub mod jail;
pub mod metrics;
pub mod milestones;
pub mod netns;
pub mod process;
pub mod python;
pub mod scratch;
pub mod security;
pub mod tiny;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use process::{run_with_timeout, wait_with_timeout, Finished, KillOnDrop};
pub use scratch::ScratchDir;

/// Panics unless the test runs as root (euid 0).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "MISSING PRECONDITION: this test needs root (euid is {euid}); run the README's test command as root"
    );
}

/// Panics unless `/dev/kvm` exists and can be opened read-write.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("MISSING PRECONDITION: this test needs a usable /dev/kvm ({e})");
    }
}

/// True on hosts where KVM is provided by `kvm_pvm` (guest ring 0 emulated, guest user
/// space cannot run); see shared/notes/host-kvm.md.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The directory holding the workspace's binaries for the profile this test was built with
/// (`target/<triple>/<profile>/`); test executables live in its `deps/` subdirectory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// Path of a workspace binary (`vmm`, `jailer`, ...), panicking with a clear message when it
/// has not been built.
pub fn require_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "MISSING PRECONDITION: binary {} is not built; run `cargo build --workspace` (the README's test command does)",
        path.display()
    );
    path
}

/// Path of an executable found in `PATH` (a tool the test needs: `ip`, `nft`, `qemu-...`),
/// panicking with the Debian package to install when it is missing.
pub fn require_program(name: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "MISSING PRECONDITION: {name} is not installed (Debian package {debian_package}); \
                 the README's test command installs it (test.sh, scripts/assets.sh)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where the set-up keeps built guest assets (outside the repo): `$KILN_CACHE`, else
/// `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln`. Mirrors scripts/lib.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kiln");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("kiln")
}

/// A unique, short name for jails, sockets and namespaces made by one test.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_in_path() {
        assert!(require_program("sh", "dash").is_file());
    }

    #[test]
    #[should_panic(expected = "MISSING PRECONDITION: kiln-no-such-program is not installed")]
    fn names_a_missing_program() {
        require_program("kiln-no-such-program", "none");
    }
}
