//! The host end of the guest's vsock stream: frames of `kiln_protocol` (guest/protocol) over
//! the Unix socket the VMM forwards the guest's connection to, each read and write bounded
//! by a deadline.

use kiln_protocol::{Header, HeaderError, Kind, HEADER_LEN};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the guest did not answer in time")]
    Timeout,
    #[error("the guest closed the vsock stream")]
    Closed,
    #[error("bad frame from the guest: {0}")]
    BadHeader(HeaderError),
    #[error("vsock stream I/O failed: {0}")]
    Io(io::Error),
}

/// One frame as read.
#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// A connected stream to one guest.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
    /// Largest payload accepted from the guest.
    max_payload: u32,
}

fn io_error(e: io::Error) -> ChannelError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ChannelError::Timeout,
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => ChannelError::Closed,
        _ => ChannelError::Io(e),
    }
}

impl Channel {
    pub fn new(stream: UnixStream, max_payload: u32) -> Channel {
        Channel {
            stream,
            max_payload,
        }
    }

    fn remaining(deadline: Instant) -> Result<std::time::Duration, ChannelError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ChannelError::Timeout)
        } else {
            Ok(left)
        }
    }

    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), ChannelError> {
        let mut got = 0;
        while got < buf.len() {
            let left = Self::remaining(deadline)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(ChannelError::Io)?;
            let Some(rest) = buf.get_mut(got..) else {
                break;
            };
            match self.stream.read(rest) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    /// Reads one frame; its payload is at most the channel's limit.
    pub fn read_frame(&mut self, deadline: Instant) -> Result<Frame, ChannelError> {
        let mut head = [0u8; HEADER_LEN];
        self.read_exact_by(&mut head, deadline)?;
        let header = Header::decode(&head, self.max_payload).map_err(ChannelError::BadHeader)?;
        let len = usize::try_from(header.len).map_err(|_| {
            ChannelError::BadHeader(HeaderError::TooLong {
                len: header.len,
                max: self.max_payload,
            })
        })?;
        let mut payload = vec![0u8; len];
        self.read_exact_by(&mut payload, deadline)?;
        Ok(Frame { header, payload })
    }

    /// Sends one frame (header and payload in one buffer).
    pub fn send(
        &mut self,
        kind: Kind,
        id: u32,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            ChannelError::Io(io::Error::other(
                "payload longer than 4 GiB cannot be framed",
            ))
        })?;
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&Header::new(kind, id, len).encode());
        buf.extend_from_slice(payload);
        let mut sent = 0;
        while sent < buf.len() {
            let left = Self::remaining(deadline)?;
            self.stream
                .set_write_timeout(Some(left))
                .map_err(ChannelError::Io)?;
            let Some(rest) = buf.get(sent..) else {
                break;
            };
            match self.stream.write(rest) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn frames_round_trip_over_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut host = Channel::new(a, 100);
        let mut guest = Channel::new(b, 100);
        host.send(Kind::Invoke, 7, b"{}", soon()).unwrap();
        let f = guest.read_frame(soon()).unwrap();
        assert_eq!(f.header, Header::new(Kind::Invoke, 7, 2));
        assert_eq!(f.payload, b"{}");
    }

    #[test]
    fn oversized_frames_eof_and_silence_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut host = Channel::new(a, 4);
        let mut guest = Channel::new(b, 100);
        guest.send(Kind::Response, 1, b"12345", soon()).unwrap();
        assert!(matches!(
            host.read_frame(soon()),
            Err(ChannelError::BadHeader(HeaderError::TooLong {
                len: 5,
                max: 4
            }))
        ));
        let (a, b) = UnixStream::pair().unwrap();
        let mut host = Channel::new(a, 4);
        let t = Instant::now();
        assert!(matches!(
            host.read_frame(Instant::now() + Duration::from_millis(50)),
            Err(ChannelError::Timeout)
        ));
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(b);
        assert!(matches!(host.read_frame(soon()), Err(ChannelError::Closed)));
    }
}
