//! Reading from the processes and sockets under test.
//!
//! A `read` on a socket with a receive timeout (`set_read_timeout`, SO_RCVTIMEO) fails with
//! `EINTR` when any signal is handled in the reading thread meanwhile, even one installed
//! with `SA_RESTART` (signal(7)); `Read::read` hands that back to its caller. Seen in
//! `vmm_pit` under load: an API answer read as "no response". Every helper here retries it,
//! as `read_exact` and `read_to_end` do.

use std::io::{self, Read};

/// `r.read(buf)`, retried while it is interrupted by a signal.
pub fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader interrupted twice, then giving its bytes.
    struct Interrupted(u8, &'static [u8]);

    impl Read for Interrupted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 > 0 {
                self.0 -= 1;
                return Err(io::ErrorKind::Interrupted.into());
            }
            self.1.read(buf)
        }
    }

    #[test]
    fn interruptions_are_retried_and_other_results_returned() {
        let mut buf = [0u8; 8];
        let mut r = Interrupted(2, b"abc");
        assert_eq!(read_some(&mut r, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(read_some(&mut r, &mut buf).unwrap(), 0);
    }
}
