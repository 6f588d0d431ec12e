//! The host's random bytes, for the guest (virtio-rng) and for the VMM's own secrets (MMDS
//! session tokens): one way to ask the kernel, which never waits.

/// Fills `buf` from the kernel's random source without waiting for it: `getrandom(2)` with
/// `GRND_NONBLOCK` (`EAGAIN` only while the host's pool is not initialised yet, at boot).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0usize;
    // A getrandom of the urandom source returns everything asked for up to 32 MiB unless a
    // signal interrupts it; a few turns are plenty.
    for _ in 0..8 {
        let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid,
        // exclusively borrowed memory for the whole call.
        let n =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        match usize::try_from(n) {
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(std::io::Error::from(std::io::ErrorKind::Interrupted))
    }
}
