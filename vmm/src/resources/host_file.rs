//! Image files a request names (kernel, initrd, drive backing files), opened when the
//! request is accepted, as Firecracker does: a missing or unreadable file is refused by the
//! `PUT` that names it, and the file opened then is the one the microVM uses at
//! `InstanceStart`, even if the path is removed or replaced in between.
//!
//! Files are opened by the project's one rule for image files (`kiln_hostfs::open_regular`:
//! a regular file only, without ever blocking on a FIFO).

use super::ResourceError;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// An image file held open by a configuration. Clones share the descriptor.
///
/// Two configurations are equal when they name the same paths with the same settings:
/// which descriptor holds the file is not part of the value, so `==` ignores it.
#[derive(Clone, Default)]
pub struct Opened(Option<Arc<File>>);

impl Opened {
    pub(super) fn hold(file: File) -> Opened {
        Opened(Some(Arc::new(file)))
    }

    /// A descriptor of the held file for a device or the loader (a duplicate: it shares
    /// the file offset, and every user reads at explicit offsets). `None` when the
    /// configuration was never validated (built by hand, not through `VmResources`).
    pub fn duplicate(&self) -> Option<std::io::Result<File>> {
        self.0.as_ref().map(|f| f.try_clone())
    }
}

impl PartialEq for Opened {
    fn eq(&self, _: &Opened) -> bool {
        true
    }
}

impl Eq for Opened {}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Opened"
        } else {
            "NotOpened"
        })
    }
}

/// Opens the image at `path` (`what` names it in errors: "boot-source: the kernel file").
pub fn open_image(what: &'static str, path: &str, writable: bool) -> Result<File, ResourceError> {
    let bad = |reason: String| ResourceError::Open {
        what,
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("the path is empty".into()));
    }
    if path.contains('\0') {
        return Err(bad("the path contains a NUL byte".into()));
    }
    kiln_hostfs::open_regular(Path::new(path), writable).map_err(|e| bad(e.to_string()))
}

/// Checks without opening that `path` names a regular file (`stat` follows links): for a
/// file that is opened later by code that cannot use [`open_image`] (`PATCH /drives` after
/// boot, under the VMM thread's seccomp filter).
pub fn check_regular_file(what: &'static str, path: &str) -> Result<(), ResourceError> {
    let bad = |reason: String| ResourceError::Open {
        what,
        path: path.to_string(),
        reason,
    };
    if path.is_empty() || path.contains('\0') {
        return Err(bad("the path is empty or contains a NUL byte".into()));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(bad("it is not a regular file".into())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The file a configuration holds, or (for a configuration never validated) the file at
/// `path` opened now by the same rule.
pub fn held_or_open(
    held: &Opened,
    what: &'static str,
    path: &str,
    writable: bool,
) -> Result<File, ResourceError> {
    match held.duplicate() {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(ResourceError::Open {
            what,
            path: path.to_string(),
            reason: format!("cannot duplicate its descriptor: {e}"),
        }),
        None => open_image(what, path, writable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opened_files_survive_their_path_and_messages_name_the_file() {
        let dir = std::env::temp_dir().join(format!("kiln-host-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("kernel");
        std::fs::write(&p, b"image").unwrap();
        let path = p.to_str().unwrap();
        let held = Opened::hold(open_image("the kernel file", path, false).unwrap());
        std::fs::remove_file(&p).unwrap();
        let mut f = held_or_open(&held, "the kernel file", path, false).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text).unwrap();
        assert_eq!(text, "image");
        assert_eq!(
            held,
            Opened::default(),
            "the descriptor is not part of the value"
        );
        let e = held_or_open(&Opened::default(), "the kernel file", path, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the kernel file {path:?} cannot be opened: No such file or directory (os error 2)"
            )
        );
        let e = open_image("drives: the backing file", dir.to_str().unwrap(), false).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("cannot be opened: it is a directory, not a regular file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
