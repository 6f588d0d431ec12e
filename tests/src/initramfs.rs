//! Initramfs archives written by a test: the "newc" cpio format the Linux kernel unpacks
//! into its root file system at boot (an uncompressed archive needs no decompressor in the
//! guest kernel).

/// One member: a path without the leading `/`, a full mode (`0o100755` for an executable
/// regular file, `0o040755` for a directory) and its content (empty for a directory).
pub struct Member<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// A newc cpio archive of `members`, in order, closed by the `TRAILER!!!` member. Owner root,
/// time 0, each member its own inode number.
pub fn newc(members: &[Member<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, m) in (1u32..).zip(members) {
        push(&mut out, ino, m.mode, m.path, m.data);
    }
    push(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

fn push(out: &mut Vec<u8>, ino: u32, mode: u32, path: &str, data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let name_size = u32::try_from(path.len() + 1).expect("a newc member's path is short");
    let size = u32::try_from(data.len()).expect("a newc member holds less than 4 GiB");
    out.extend_from_slice(b"070701");
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    for v in [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0] {
        out.extend_from_slice(format!("{v:08x}").as_bytes());
    }
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_the_trailer_are_aligned_newc_records() {
        let a = newc(&[Member {
            path: "init",
            mode: 0o100755,
            data: b"abcde",
        }]);
        assert_eq!(&a[..6], b"070701");
        // mode and filesize fields
        assert_eq!(&a[14..22], b"000081ed");
        assert_eq!(&a[54..62], b"00000005");
        // 110-byte header + "init\0" = 115, padded to 116; data 5 bytes padded to 8.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..121], b"abcde");
        assert_eq!(&a[124..130], b"070701");
        assert_eq!(&a[124 + 110..124 + 121], b"TRAILER!!!\0");
        assert_eq!(a.len() % 4, 0);
    }
}
