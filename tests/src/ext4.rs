//! ext4 images for the slow tier's Linux boots, edited from the host with e2fsprogs (no
//! mount): making one, putting an executable in it, and reading its superblock's mount stamp
//! (which shows the guest mounted it).

use crate::require_program;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// Runs an e2fsprogs `program` with `args`; fails the test on an exit or `debugfs:` error.
fn e2fsprogs(program: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(require_program(program, "e2fsprogs"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && !err
                .lines()
                .any(|l| l.contains("debugfs:") && l.contains("rror")),
        "{program} {args:?} failed: {err}"
    );
}

/// A fresh ext4 file system without a journal, with `block_size`-byte blocks, filling the
/// existing file `image`.
pub fn make(image: &Path, block_size: u32) {
    let bs = block_size.to_string();
    let args = ["-q", "-F", "-t", "ext4", "-b", &bs, "-O", "^has_journal"];
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.push(image.as_os_str());
    e2fsprogs("mke2fs", &all);
}

/// One `debugfs -w -R request` on `image`.
pub fn debugfs(image: &Path, request: &str) {
    let args: [&std::ffi::OsStr; 4] = [
        "-w".as_ref(),
        "-R".as_ref(),
        request.as_ref(),
        image.as_os_str(),
    ];
    e2fsprogs("debugfs", &args);
}

/// Copies the host file `from` into `image` at the absolute path `at`, mode 0755.
pub fn add_executable(image: &Path, from: &Path, at: &str) {
    let inside = at.trim_start_matches('/');
    debugfs(image, &format!("write {} {inside}", from.display()));
    debugfs(image, &format!("sif {at} mode 0100755"));
}

/// (mount count, last mount time) from the ext4 superblock (at byte 1024: `s_mtime` at
/// 0x2c, `s_mnt_count` at 0x34).
pub fn mount_stamp(image: &Path) -> (u16, u32) {
    let mut f = std::fs::File::open(image).expect("open image");
    let mut sb = [0u8; 1024 + 0x40];
    f.read_exact(&mut sb).expect("read superblock");
    let s = &sb[1024..];
    assert_eq!(&s[0x38..0x3a], &[0x53, 0xef], "ext4 magic");
    (
        u16::from_le_bytes([s[0x34], s[0x35]]),
        u32::from_le_bytes([s[0x2c], s[0x2d], s[0x2e], s[0x2f]]),
    )
}
