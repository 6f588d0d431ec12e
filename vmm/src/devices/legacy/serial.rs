//! COM1: vm-superio's 16550A model on ports 0x3f8–0x3ff, raising IRQ 4, writing the guest's
//! output to the VMM's stdout or to a file/FIFO (`--serial-out`), and reading the VMM's
//! stdin as the guest's input. An optional token bucket of bytes (`PUT /serial`'s
//! `rate_limiter`) drops the output beyond it (`uart.rate_limiter_dropped_bytes`): a guest
//! cannot fill the host's disk or flood a log pipe faster than it allows.

use super::IrqLine;
use crate::devices::bus::BusDevice;
use crate::devices::rate_limiter::TokenBucket;
use crate::sync::lock;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

pub mod persist;

/// Where the guest's serial output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialSink {
    #[default]
    Stdout,
    /// A file (created if missing, appended to) or a FIFO (which must have a reader).
    Path(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial output {path:?} (--serial-out, serial_out_path): {source}")]
    Open { path: String, source: io::Error },
    #[error("cannot make the serial output {path:?} blocking again: {source}")]
    Fcntl { path: String, source: io::Error },
}

enum Out {
    Stdout(io::Stdout),
    File(File),
}

/// The UART's output: the sink, plus an optional callback run at the guest's first byte
/// (the boot timer uses it).
pub struct SerialOutput {
    out: Out,
    first_byte: Option<Box<dyn FnOnce() + Send>>,
    limiter: Option<TokenBucket>,
}

impl SerialOutput {
    pub fn open(sink: &SerialSink) -> Result<Self, SerialError> {
        let out = match sink {
            SerialSink::Stdout => Out::Stdout(io::stdout()),
            SerialSink::Path(path) => {
                // O_NONBLOCK makes opening a FIFO without a reader fail (ENXIO) instead of
                // hanging; writes are blocking again afterwards.
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(|source| SerialError::Open {
                        path: path.clone(),
                        source,
                    })?;
                set_blocking(&file).map_err(|source| SerialError::Fcntl {
                    path: path.clone(),
                    source,
                })?;
                Out::File(file)
            }
        };
        Ok(SerialOutput {
            out,
            first_byte: None,
            limiter: None,
        })
    }

    /// Drops output beyond `bucket` (bytes), counting what was dropped.
    pub fn set_rate_limiter(&mut self, bucket: TokenBucket) {
        self.limiter = Some(bucket);
    }

    /// Runs `f` when the guest writes its first byte.
    pub fn on_first_byte(&mut self, f: Box<dyn FnOnce() + Send>) {
        self.first_byte = Some(f);
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(F_GETFL) on a file descriptor this function borrows; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, F_SETFL with flags derived from the current ones.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = self.first_byte.take() {
            f();
        }
        crate::metrics::METRICS
            .uart
            .write_count
            .add(buf.len() as u64);
        if let Some(b) = self.limiter.as_mut() {
            if !b.try_take_at(buf.len() as u64, Instant::now()) {
                crate::metrics::METRICS
                    .uart
                    .rate_limiter_dropped_bytes
                    .add(buf.len() as u64);
                return Ok(buf.len());
            }
        }
        match &mut self.out {
            Out::Stdout(s) => s.write(buf),
            Out::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => f.flush(),
        }
    }
}

/// COM1 as a port-I/O bus device.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, SerialOutput>,
    /// Output bytes the sink refused (the guest is never blocked on them).
    lost_bytes: u64,
    /// Accesses wider than one byte (a UART register is one byte wide).
    bad_accesses: u64,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
            lost_bytes: 0,
            bad_accesses: 0,
        }
    }

    /// Queues input for the guest; returns how many bytes fitted in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// (output bytes lost, malformed accesses).
    pub fn counters(&self) -> (u64, u64) {
        (self.lost_bytes, self.bad_accesses)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(off)) => *byte = self.uart.read(off),
            (data, _) => {
                self.bad_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(off)) => {
                if self.uart.write(off, *byte).is_err() {
                    self.lost_bytes += 1;
                }
            }
            _ => self.bad_accesses += 1,
        }
    }
}

/// Feeds the VMM's stdin to the guest's UART. Returns what to do with the input source:
/// `false` once it reached end of file or failed (it is then removed from the event loop).
pub fn forward_input(input: &mut impl Read, serial: &Arc<Mutex<SerialDevice>>) -> bool {
    let mut buf = [0u8; 64];
    match input.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            // Bytes that do not fit in the 64-byte FIFO are dropped.
            lock(serial).enqueue_input(buf.get(..n).unwrap_or(&[]));
            true
        }
        Err(e)
            if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock =>
        {
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn device(path: &str) -> (SerialDevice, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SerialOutput::open(&SerialSink::Path(path.into())).unwrap();
        (
            SerialDevice::new(IrqLine(evt.try_clone().unwrap()), out),
            evt,
        )
    }

    #[test]
    fn writes_reach_the_file_and_first_byte_hook_runs_once() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-{}", std::process::id()));
        let (mut dev, _evt) = device(dir.to_str().unwrap());
        let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let h = hits.clone();
        dev.uart.writer_mut().on_first_byte(Box::new(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&dir).unwrap(), b"hi\n");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn wide_or_empty_accesses_are_counted_not_served() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-w-{}", std::process::id()));
        let (mut dev, _evt) = device(dir.to_str().unwrap());
        dev.write(0, &[1, 2]);
        dev.write(0, &[]);
        let mut d = [0u8; 4];
        dev.read(5, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert_eq!(dev.counters().1, 3);
        assert!(std::fs::read(&dir).unwrap().is_empty());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn fifo_without_reader_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("kiln-serial-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = SerialOutput::open(&SerialSink::Path(path.to_str().unwrap().into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--serial-out"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn output_beyond_the_bucket_is_dropped_and_counted() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-rl-{}", std::process::id()));
        let (mut dev, _evt) = device(dir.to_str().unwrap());
        let cfg = crate::resources::TokenBucketConfig {
            size: 4,
            one_time_burst: Some(2),
            refill_time: 3_600_000,
        };
        let bucket = TokenBucket::new(&cfg, Instant::now()).unwrap();
        dev.uart.writer_mut().set_rate_limiter(bucket);
        let dropped = crate::metrics::METRICS
            .uart
            .rate_limiter_dropped_bytes
            .total();
        for b in b"abcdefghij" {
            dev.write(0, &[*b]);
        }
        // The burst (2) and the bucket (4), then nothing for an hour.
        assert_eq!(std::fs::read(&dir).unwrap(), b"abcdef");
        assert!(
            crate::metrics::METRICS
                .uart
                .rate_limiter_dropped_bytes
                .total()
                >= dropped + 4
        );
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn input_is_queued_for_the_guest() {
        let dir = std::env::temp_dir().join(format!("kiln-serial-in-{}", std::process::id()));
        let (dev, _evt) = device(dir.to_str().unwrap());
        let dev = Arc::new(Mutex::new(dev));
        assert!(forward_input(&mut &b"ab"[..], &dev));
        assert!(!forward_input(&mut &b""[..], &dev));
        // LSR (offset 5) bit 0: data ready; RBR (offset 0) returns the bytes in order.
        let mut b = [0u8];
        lock(&dev).read(5, &mut b);
        assert_eq!(b[0] & 1, 1);
        lock(&dev).read(0, &mut b);
        assert_eq!(b[0], b'a');
        let _ = std::fs::remove_file(&dir);
    }
}
