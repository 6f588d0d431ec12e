//! The `NETLINK_NETFILTER` socket: sending a batch and reading its acknowledgements.
//!
//! nfnetlink handles a batch while `send` runs, so every answer is queued before `send`
//! returns: they are read without waiting (as `nft` does), up to the acknowledgement of the
//! batch's last message. The socket is close-on-exec
//! and its owner decides when it is closed: releasing it right after a transaction waits for
//! nf_tables' deferred clean-up of that transaction (an RCU grace period, milliseconds), so
//! the jailer closes it off the start-up path.
//!
//! Raw calls: `socket`, `setsockopt`, `send`, `recv` (nix's socket wrappers would add a
//! feature to the jailer for these four calls).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::batch::Finished;
use super::reply::{self, ReplyError};

/// `SOL_NETLINK` options.
const NETLINK_CAP_ACK: libc::c_int = 10;
/// Room for the answers to a batch of which every message is refused (thousands).
const RCVBUF: libc::c_int = 1 << 20;
/// A batch is one netlink message of this many bytes at most without a larger send buffer.
const SNDBUF_DEFAULT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("opening a NETLINK_NETFILTER socket: {0}")]
    Open(#[source] io::Error),
    #[error("sending the nftables batch ({len} bytes): {source}")]
    Send { len: usize, source: io::Error },
    #[error("reading the kernel's answer to the nftables batch: {0}")]
    Receive(#[source] io::Error),
    #[error("the kernel's answer to the nftables batch: {0}")]
    Reply(#[from] ReplyError),
    #[error("nftables refused {object}: {source}")]
    Refused { object: String, source: io::Error },
    #[error("nftables did not acknowledge the batch (its last message: {last})")]
    Unacknowledged { last: String },
}

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Socket {
    pub fn open() -> Result<Socket, NftError> {
        // SAFETY: socket takes integer arguments; the descriptor is owned right away.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })
        .map_err(NftError::Open)?;
        // SAFETY: `fd` was just returned by socket and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Socket { fd };
        // Errors are answered with the failed message's header only, not its whole body.
        sock.set_option(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        // Root may exceed rmem_max; without it the default buffer holds ~200 answers.
        sock.set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF);
        Ok(sock)
    }

    /// Sets an integer option; a failure only costs room or brevity in the answers.
    fn set_option(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
        // SAFETY: the option value is a c_int that lives for the call, and `len` is its size.
        let _ = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                len,
            )
        };
    }

    /// Sends the batch and checks that the kernel applied it.
    pub fn apply(&self, batch: &Finished) -> Result<(), NftError> {
        let Some(last) = batch.last_seq() else {
            return Ok(());
        };
        let bytes = &batch.bytes;
        if bytes.len() > SNDBUF_DEFAULT {
            // The whole batch goes in one send (the kernel doubles the value).
            let room = libc::c_int::try_from(bytes.len()).unwrap_or(libc::c_int::MAX);
            self.set_option(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room);
        }
        // SAFETY: the buffer is valid for reads of its length for the call.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if usize::try_from(sent).ok() != Some(bytes.len()) {
            let source = match sent {
                -1 => io::Error::last_os_error(),
                _ => io::Error::new(io::ErrorKind::WriteZero, "short send"),
            };
            return Err(NftError::Send {
                len: bytes.len(),
                source,
            });
        }
        let mut refused = None;
        let mut acknowledged = false;
        let mut buf = vec![0u8; 64 * 1024];
        while !acknowledged {
            // SAFETY: `buf` is valid for writes of its length for the call.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(got) = usize::try_from(got) else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || refused.is_some() {
                    break;
                }
                return Err(NftError::Receive(e));
            };
            if got == 0 {
                break;
            }
            for ack in reply::parse(&buf[..got])? {
                if ack.error != 0 && refused.is_none() {
                    refused = Some(ack);
                }
                acknowledged |= ack.seq == last;
            }
        }
        if let Some(bad) = refused {
            let object = batch
                .object(bad.seq)
                .map_or_else(|| "the transaction".to_owned(), str::to_owned);
            return Err(NftError::Refused {
                object,
                source: io::Error::from_raw_os_error(bad.error.saturating_neg()),
            });
        }
        if !acknowledged {
            return Err(NftError::Unacknowledged {
                last: batch.object(last).unwrap_or_default().to_owned(),
            });
        }
        Ok(())
    }
}
