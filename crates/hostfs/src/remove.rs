//! Removing a directory tree that a jailed tenant may have written: a jail's root, the worker's
//! instance directory with the vsock directory the jail could write to.
//!
//! Such a tree is hostile: directories nested 100,000 deep, millions of entries in one
//! directory, names of any bytes, symbolic links to the host's files, mount points. A
//! recursive removal (`std::fs::remove_dir_all`) holds one descriptor and one stack frame per
//! level: at an orchestrator's usual 1,024-descriptor limit it fails with EMFILE ~1,000 levels
//! down, and with a larger limit the stack overflows (killing every tenant's worker). So
//! [`remove_tree`]:
//!
//! - walks the tree with one directory descriptor at a time (two while it moves down or up):
//!   down with `openat(name, O_NOFOLLOW | O_DIRECTORY)`, back up with `openat("..")`; every
//!   removal is an `unlinkat` relative to the directory's descriptor, so no path is ever
//!   resolved twice and its length does not matter;
//! - iterates, never recurses: its stack is constant; its heap holds one directory offset per
//!   level (8 bytes) and the inode numbers of the directories it could not empty;
//! - never follows a symbolic link (it removes the link), never crosses into another mount
//!   (same device and same mount id as the top of the tree, or the directory is left and
//!   reported), and never goes above the top;
//! - reads directories with `getdents64` into one fixed buffer, whatever their size;
//! - goes on past what it cannot remove, and reports how many entries are left and why
//!   (the first few, names escaped and cut short).
//!
//! Removing what is already gone is not an error, so an interrupted removal can be run again.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Bytes read per `getdents64` call.
const DIRENT_BUFFER: usize = 64 * 1024;
/// Failures described in the error (the rest are only counted).
const FAILURES_SHOWN: usize = 3;
/// Longest name shown in a failure (hostile names are long on purpose).
const NAME_SHOWN: usize = 64;

/// Why a tree was not removed completely.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The top of the tree could not be opened or examined.
    #[error("removing {path}: {op}: {source}")]
    Top {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Entries below the top could not be removed; everything else was.
    #[error("removing {path}: {left} entries left: {first}")]
    Incomplete {
        path: PathBuf,
        left: u64,
        first: String,
    },
    /// The walk found itself outside the tree it started in (the tree was changed under it).
    #[error("removing {path}: the tree changed during the removal ({what}); stopped")]
    Changed { path: PathBuf, what: String },
}

/// What the walk could not remove: how many entries, and the first few reasons.
#[derive(Debug, Default)]
struct Failures {
    count: u64,
    shown: Vec<String>,
}

impl Failures {
    fn add(&mut self, depth: usize, name: &[u8], what: &str, err: Option<io::Error>) {
        self.count += 1;
        if self.shown.len() < FAILURES_SHOWN {
            let mut text = format!("{} (depth {depth}): {what}", shown_name(name));
            if let Some(e) = err {
                text.push_str(&format!(": {e}"));
            }
            self.shown.push(text);
        }
    }
}

/// A name from the tree, escaped and cut short for a message.
fn shown_name(name: &[u8]) -> String {
    let mut s: String = name
        .iter()
        .take(NAME_SHOWN)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if name.len() > NAME_SHOWN {
        s.push_str("...");
    }
    format!("\"{s}\"")
}

/// Where a directory lives: its device and mount id (a bind mount of the same file system
/// has the same device but another mount id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    dev: (u32, u32),
    mnt_id: u64,
    ino: u64,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `statx` of an open descriptor: device, mount id and inode.
fn place(fd: &OwnedFd) -> io::Result<Place> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH describes `fd` itself; the
    // kernel writes one statx into `st`, which lives for the call.
    cvt(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_INO | libc::STATX_MNT_ID,
            &mut st,
        )
    })?;
    // Without STATX_MNT_ID in the answer (kernels before 5.8) the device alone decides.
    let mnt_id = if st.stx_mask & libc::STATX_MNT_ID != 0 {
        st.stx_mnt_id
    } else {
        0
    };
    Ok(Place {
        dev: (st.stx_dev_major, st.stx_dev_minor),
        mnt_id,
        ino: st.stx_ino,
    })
}

fn same_mount(a: Place, b: Place) -> bool {
    a.dev == b.dev && a.mnt_id == b.mnt_id
}

/// `openat(dir, name)` of a directory, never following a symbolic link.
fn open_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and lives for the call; the result is owned at once.
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlink_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and lives for the call.
    cvt(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(drop)
}

/// Whether `name` in `dir` is a directory (for file systems that do not say in `d_type`).
fn is_dir_at(dir: RawFd, name: &CStr) -> io::Result<bool> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated; the kernel writes one stat into `st`.
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn seek(dir: &OwnedFd, offset: i64) -> io::Result<()> {
    // SAFETY: lseek on a descriptor we own; a directory offset from getdents64 (or 0).
    let ret = unsafe { libc::lseek(dir.as_raw_fd(), offset, libc::SEEK_SET) };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One `getdents64` call into `buf`: the number of bytes filled (0 at the end).
fn getdents(dir: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes of directory entries into buf.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One entry of a `getdents64` buffer.
struct Entry<'a> {
    ino: u64,
    /// Offset of the entry after this one.
    next: i64,
    kind: u8,
    name: &'a [u8],
}

/// Parses the entries of a filled `getdents64` buffer (`struct linux_dirent64`: ino u64,
/// off i64, reclen u16, type u8, then the NUL-terminated name). Stops at anything malformed.
fn entries(buf: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let head = buf.get(at..at.checked_add(19)?)?;
        let ino = u64::from_ne_bytes(head.get(0..8)?.try_into().ok()?);
        let next = i64::from_ne_bytes(head.get(8..16)?.try_into().ok()?);
        let reclen = usize::from(u16::from_ne_bytes(head.get(16..18)?.try_into().ok()?));
        let kind = *head.get(18)?;
        let record = buf.get(at..at.checked_add(reclen)?)?;
        if reclen < 20 {
            return None;
        }
        let raw = record.get(19..)?;
        let name = &raw[..raw.iter().position(|&b| b == 0)?];
        at += reclen;
        Some(Entry {
            ino,
            next,
            kind,
            name,
        })
    })
}

/// What a pass over one directory found.
enum Pass {
    /// It reached the end: whether it removed anything, and how many entries it left.
    Done { removed: bool, left: u64 },
    /// A non-empty subdirectory, opened, and the offset of its entry (to resume at).
    Descend(OwnedFd, i64),
}

/// What became of one entry.
enum Fate {
    Removed,
    Left,
    Descend(OwnedFd),
}

/// The walk's state: the top of the tree and what could not be removed.
struct Walk {
    top: Place,
    /// Directories left non-empty (or other mounts), by inode: never entered again.
    stuck: HashSet<u64>,
    failures: Failures,
    buf: Vec<u8>,
}

impl Walk {
    /// Removes every entry of `dir` it can, from `offset` to the end; stops at the first
    /// subdirectory that is not empty and returns it opened.
    fn pass(&mut self, dir: &OwnedFd, depth: usize, offset: i64) -> io::Result<Pass> {
        seek(dir, offset)?;
        let mut at = offset;
        let (mut removed, mut left) = (false, 0u64);
        let mut buf = std::mem::take(&mut self.buf);
        let result = 'listing: loop {
            let n = match getdents(dir, &mut buf) {
                Ok(0) => break Ok(Pass::Done { removed, left }),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            for e in entries(buf.get(..n).unwrap_or_default()) {
                let here = at;
                at = e.next;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let Ok(name) = CString::new(e.name) else {
                    continue;
                };
                match self.remove_entry(dir, depth, &e, &name) {
                    Fate::Removed => removed = true,
                    Fate::Left => left += 1,
                    Fate::Descend(child) => break 'listing Ok(Pass::Descend(child, here)),
                }
            }
        };
        self.buf = buf;
        result
    }

    /// Removes one entry, or says to go down into it (a directory that is not empty).
    fn remove_entry(&mut self, dir: &OwnedFd, depth: usize, e: &Entry<'_>, name: &CStr) -> Fate {
        let fd = dir.as_raw_fd();
        let gone = |err: &io::Error| err.raw_os_error() == Some(libc::ENOENT);
        let is_dir = match e.kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => match is_dir_at(fd, name) {
                Ok(d) => d,
                Err(err) if gone(&err) => return Fate::Removed,
                Err(err) => {
                    self.failures
                        .add(depth, e.name, "cannot examine", Some(err));
                    return Fate::Left;
                }
            },
            _ => false,
        };
        if !is_dir {
            return match unlink_at(fd, name, 0) {
                Ok(()) => Fate::Removed,
                Err(err) if gone(&err) => Fate::Removed,
                Err(err) => {
                    self.failures.add(depth, e.name, "cannot remove", Some(err));
                    Fate::Left
                }
            };
        }
        if self.stuck.contains(&e.ino) {
            return Fate::Left;
        }
        let stuck = |walk: &mut Walk, what: &str, err: Option<io::Error>| {
            walk.stuck.insert(e.ino);
            walk.failures.add(depth, e.name, what, err);
            Fate::Left
        };
        match unlink_at(fd, name, libc::AT_REMOVEDIR) {
            Ok(()) => return Fate::Removed,
            Err(err) if gone(&err) => return Fate::Removed,
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
            Err(err) => return stuck(self, "cannot remove the directory", Some(err)),
        }
        let child = match open_dir(fd, name) {
            Ok(c) => c,
            Err(err) if gone(&err) => return Fate::Removed,
            Err(err) => return stuck(self, "cannot open the directory", Some(err)),
        };
        match place(&child) {
            Ok(p) if same_mount(p, self.top) => Fate::Descend(child),
            Ok(_) => stuck(self, "another mount: not entered", None),
            Err(err) => stuck(self, "cannot examine the directory", Some(err)),
        }
    }
}

/// Empties the directory `top` (opened; `path` names it in errors) without recursion.
fn empty(path: &Path, top: OwnedFd) -> Result<Failures, RemoveError> {
    let changed = |what: String| RemoveError::Changed {
        path: path.to_path_buf(),
        what,
    };
    let top_place = place(&top).map_err(|source| RemoveError::Top {
        path: path.to_path_buf(),
        op: "statx",
        source,
    })?;
    let mut walk = Walk {
        top: top_place,
        stuck: HashSet::new(),
        failures: Failures::default(),
        buf: vec![0u8; DIRENT_BUFFER],
    };
    // The current directory, where its pass starts, and for each level above it the offset
    // of the entry to resume at (the subdirectory the walk went down into).
    let mut cur = top;
    let mut offset = 0i64;
    let mut resume: Vec<i64> = Vec::new();
    loop {
        let depth = resume.len();
        let left = match walk.pass(&cur, depth, offset) {
            Ok(Pass::Descend(child, at)) => {
                resume.push(at);
                cur = child;
                offset = 0;
                continue;
            }
            // A pass that started midway, or removed something, is followed by one from
            // the start: file systems need not list entries removed or added while a
            // listing runs, and nothing before the midpoint was looked at again.
            Ok(Pass::Done { removed, .. }) if removed || offset != 0 => {
                offset = 0;
                continue;
            }
            Ok(Pass::Done { left, .. }) => left,
            // Removed by someone else since it was opened (a keeper removing the same jail):
            // nothing is left in it.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => 0,
            Err(err) => {
                walk.failures.add(depth, b".", "cannot list", Some(err));
                1
            }
        };
        let Some(at) = resume.pop() else {
            return Ok(walk.failures);
        };
        if left > 0 {
            let here = place(&cur).map_err(|e| changed(format!("examining a directory: {e}")))?;
            walk.stuck.insert(here.ino);
        }
        let parent = open_dir(cur.as_raw_fd(), c"..")
            .map_err(|e| changed(format!("opening a parent: {e}")))?;
        match place(&parent) {
            Ok(p) if same_mount(p, walk.top) => {}
            _ => return Err(changed("a parent is on another mount".into())),
        }
        cur = parent;
        offset = at;
    }
}

/// Removes `path` and everything below it, within the bounds the module describes. A
/// symbolic link or a file at `path` is removed itself (a link is never followed); a path
/// that does not exist is already removed.
pub fn remove_tree(path: &Path) -> Result<(), RemoveError> {
    let top_err = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| RemoveError::Top { path, op, source }
    };
    let name = path.file_name().ok_or_else(|| RemoveError::Top {
        path: path.to_path_buf(),
        op: "a tree is removed by its name",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let parent_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_c = c_path(parent_path.as_os_str()).map_err(top_err("the path holds a NUL"))?;
    let name_c = c_path(name).map_err(top_err("the name holds a NUL"))?;
    // The parent is the caller's path (trusted); only the tree below it is not.
    // SAFETY: a NUL-terminated path; the result is owned at once.
    let parent = cvt(unsafe {
        libc::open(
            parent_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    });
    let parent = match parent {
        Ok(fd) => {
            // SAFETY: `fd` was just returned by open and is owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(top_err("opening its parent")(e)),
    };
    match is_dir_at(parent.as_raw_fd(), &name_c) {
        Ok(true) => {}
        Ok(false) => {
            return match unlink_at(parent.as_raw_fd(), &name_c, 0) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(top_err("unlink")(e)),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(top_err("fstatat")(e)),
    }
    let top = match open_dir(parent.as_raw_fd(), &name_c) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(top_err("open")(e)),
    };
    let failures = empty(path, top)?;
    if failures.count == 0 {
        match unlink_at(parent.as_raw_fd(), &name_c, libc::AT_REMOVEDIR) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(top_err("rmdir")(e)),
        }
    }
    Err(RemoveError::Incomplete {
        path: path.to_path_buf(),
        left: failures.count,
        first: failures.shown.join("; "),
    })
}

fn c_path(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests;
