//! A tap device, opened by name through `/dev/net/tun` in the VMM's network namespace (the
//! jail's): `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte virtio-net
//! header on every frame (`TUNSETVNETHDRSZ`), and no offloads (`TUNSETOFFLOAD` 0): the host
//! hands the VMM only whole, checksummed frames. The descriptor is non-blocking.
//!
//! Without `CAP_NET_ADMIN` (in the jail) the tap must already exist and belong to the VMM's
//! user; the VMM never creates one there.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`): what a virtio 1.x driver uses.
pub const VNET_HDR_LEN: usize = 12;
const VNET_HDR_LEN_C: libc::c_int = 12;
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (0x0002 | 0x1000 | 0x4000), as `ifr_flags` holds it.
const TAP_FLAGS: libc::c_short = 0x5002;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot attach to tap device {name:?} (TUNSETIFF; does it exist, and may this user open it?): {source}")]
    SetIff {
        name: String,
        source: std::io::Error,
    },
    #[error("tap device {name:?}: TUNSETVNETHDRSZ failed: {source}")]
    VnetHdrSize {
        name: String,
        source: std::io::Error,
    },
    #[error("tap device {name:?}: TUNSETOFFLOAD failed: {source}")]
    Offload {
        name: String,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, &s) in ifr.ifr_name.iter_mut().zip(bytes) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS;
        // SAFETY: TUNSETIFF reads (and may update) the ifreq we own, which lives across the
        // call; the fd is the tun device we just opened.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN_C;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(TapError::VnetHdrSize {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int of flags).
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_uint) };
        if rc < 0 {
            return Err(TapError::Offload {
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A stand-in for a tap: `file` must carry one frame (with its virtio-net header) per
    /// read and write without blocking, as one end of a nonblocking `SOCK_SEQPACKET` or
    /// `SOCK_DGRAM` socket pair does (the fuzz targets; the device itself always opens a tap).
    #[doc(hidden)]
    pub fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its virtio-net header); `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf, from a descriptor we own.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Writes one frame (with its virtio-net header); `WouldBlock` when the tap's queue is
    /// full.
    pub fn write(&self, frame: &[u8]) -> std::io::Result<usize> {
        // SAFETY: reads frame.len() bytes from frame, writes to a descriptor we own.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// True for errors that only mean "not now".
    pub fn is_transient(e: &std::io::Error) -> bool {
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_kernel_headers() {
        assert_eq!(
            libc::c_int::from(TAP_FLAGS),
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR
        );
        assert_eq!(usize::try_from(VNET_HDR_LEN_C).unwrap(), VNET_HDR_LEN);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for name in ["", "a-name-longer-than-15", "nul\0"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::BadName(_))),
                "{name:?}"
            );
        }
    }
}
