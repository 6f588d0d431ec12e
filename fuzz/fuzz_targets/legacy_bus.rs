//! The buses and the legacy devices a guest reaches with port and MMIO accesses
//! (`vmm/src/devices/bus.rs`, `devices/legacy/`): the port-I/O bus with COM1 (vm-superio's
//! 16550A, writing to an in-memory file, optionally behind the output's token bucket, with
//! host input queued for the guest) and the i8042 (its command byte, self-tests, keyboard
//! commands, the CPU reset request, Ctrl+Alt+Del typed by the host) at their ports, as the
//! device manager places them; and an MMIO bus on which the input places devices of its own
//! ranges (overlapping, empty, wrapping ones are refused) before accessing it.
//!
//! Input (structured, `arbitrary`): the serial output's bucket, MMIO ranges, then accesses
//! (address, width, value) and host actions.
//!
//! Checks: a bus hands an access to a device only when the access lies entirely inside its
//! range, with the offset in it, and to the device a reference model of the bus picks
//! (reads nothing handles see all-ones); a range the bus accepts overlaps no other; every
//! byte COM1 writes out is one the guest wrote to its transmit register, in order; each
//! CPU-reset command reaches the VMM's reset callback.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm::arch::x86_64::layout::{COM1_PORT, I8042_DATA_PORT};
use vmm::devices::bus::{Bus, BusDevice};
use vmm::devices::legacy::i8042::{self, I8042};
use vmm::devices::legacy::serial::{forward_input, SerialDevice, SerialOutput, SerialSink};
use vmm::devices::legacy::IrqLine;
use vmm::devices::rate_limiter::TokenBucket;
use vmm::resources::TokenBucketConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

thread_local! {
    static OUT: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-serial"));
}

#[derive(Debug, Arbitrary)]
enum Access {
    /// A port access: mostly near COM1 and the i8042.
    Port {
        port: PortSel,
        width: u8,
        write: Option<u32>,
    },
    /// An MMIO access anywhere.
    Mmio {
        addr: u64,
        near: Option<(u8, u16)>,
        width: u8,
        write: Option<u64>,
    },
    /// The host's input for the guest (the VMM's stdin).
    Input(Vec<u8>),
    /// The host types Ctrl+Alt+Del (`SendCtrlAltDel`).
    CtrlAltDel,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum PortSel {
    Com1(u8),
    I8042(u8),
    Any(u16),
}

impl PortSel {
    fn get(self) -> u64 {
        match self {
            PortSel::Com1(o) => u64::from(COM1_PORT) + u64::from(o % 10),
            PortSel::I8042(o) => u64::from(I8042_DATA_PORT) + u64::from(o % 6),
            PortSel::Any(p) => u64::from(p),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Case {
    /// The serial output's bucket (bytes, one-time burst), refilled once an hour.
    limit: Option<(u8, u8)>,
    /// MMIO devices to place: (base, length).
    ranges: Vec<(u64, u64)>,
    accesses: Vec<Access>,
}

/// An MMIO device that records what reached it.
struct Recorder {
    len: u64,
    hits: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        assert!(
            offset + data.len() as u64 <= self.len,
            "read past the range"
        );
        data.fill(0x5a);
        self.hits.lock().unwrap().push((offset, data.len()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(
            offset + data.len() as u64 <= self.len,
            "write past the range"
        );
        self.hits.lock().unwrap().push((offset, data.len()));
    }
}

/// The reference: the device whose range holds all of `[addr, addr + len)`.
fn model(ranges: &[(u64, u64)], addr: u64, len: usize) -> Option<(usize, u64)> {
    ranges.iter().enumerate().find_map(|(i, &(base, size))| {
        let off = addr.checked_sub(base)?;
        let end = off.checked_add(len as u64)?;
        (off < size && end <= size).then_some((i, off))
    })
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    OUT.with(|out| {
        let mut out = out.borrow_mut();
        let path = out.set(&[]).to_string();
        let mut serial_out =
            SerialOutput::open(&SerialSink::Path(path.clone())).expect("the serial output opens");
        if let Some((size, burst)) = case.limit {
            let cfg = TokenBucketConfig {
                size: u64::from(size),
                one_time_burst: Some(u64::from(burst)),
                refill_time: 3_600_000,
            };
            if let Some(b) = TokenBucket::new(&cfg, Instant::now()) {
                serial_out.set_rate_limiter(b);
            }
        }
        let irq = || IrqLine(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq(), serial_out)));
        let resets = Arc::new(AtomicU32::new(0));
        let r = resets.clone();
        let kbd = Arc::new(Mutex::new(I8042::new(
            irq(),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        )));
        let mut pio = Bus::new();
        pio.insert(u64::from(COM1_PORT), 8, serial.clone())
            .expect("COM1 fits");
        pio.insert(u64::from(I8042_DATA_PORT), i8042::RANGE_LEN, kbd.clone())
            .expect("the i8042 fits");

        let mut mmio = Bus::new();
        let mut placed: Vec<(u64, u64)> = Vec::new();
        let mut hits = Vec::new();
        for &(base, len) in case.ranges.iter().take(16) {
            let len = len % 0x10_0000;
            let h = Arc::new(Mutex::new(Vec::new()));
            let dev = Arc::new(Mutex::new(Recorder {
                len,
                hits: h.clone(),
            }));
            match mmio.insert(base, len, dev) {
                Ok(()) => {
                    let end = base.checked_add(len).expect("an accepted range ends");
                    assert!(len > 0);
                    assert!(
                        placed.iter().all(|&(b, l)| end <= b || b + l <= base),
                        "{base:#x}+{len:#x} accepted over another range"
                    );
                    placed.push((base, len));
                    hits.push(h);
                }
                Err(_) => {
                    let fits = len > 0
                        && base.checked_add(len).is_some()
                        && placed
                            .iter()
                            .all(|&(b, l)| base + len <= b || b + l <= base);
                    assert!(!fits, "{base:#x}+{len:#x} refused although it fits");
                }
            }
        }

        let mut written_out = Vec::new();
        let mut lcr = 0u8;
        let mut mcr = 0u8;
        let mut reset_commands = 0u32;
        for a in &case.accesses {
            match a {
                Access::Port { port, width, write } => {
                    let port = port.get();
                    let n = usize::from(width % 5);
                    match write {
                        Some(v) => {
                            let bytes = &v.to_le_bytes()[..n];
                            if n == 1 {
                                let b = bytes[0];
                                match port.wrapping_sub(u64::from(COM1_PORT)) {
                                    0 if lcr & 0x80 == 0 && mcr & 0x10 == 0 => written_out.push(b),
                                    3 => lcr = b,
                                    4 => mcr = b,
                                    _ => {}
                                }
                                let cmd = u64::from(I8042_DATA_PORT) + i8042::COMMAND;
                                if port == cmd && b >= 0xf0 && b & 1 == 0 {
                                    reset_commands += 1;
                                }
                            }
                            pio.write(port, bytes);
                        }
                        None => {
                            let mut data = vec![0u8; n];
                            if !pio.read(port, &mut data) {
                                assert!(data.iter().all(|&b| b == 0xff));
                            }
                        }
                    }
                }
                Access::Mmio {
                    addr,
                    near,
                    width,
                    write,
                } => {
                    let addr = match (near, placed.first()) {
                        (Some((i, off)), Some(_)) => {
                            let (b, _) = placed[usize::from(*i) % placed.len()];
                            b.wrapping_add(u64::from(*off)).wrapping_sub(8)
                        }
                        _ => *addr,
                    };
                    let n = usize::from(width % 9);
                    let expect = model(&placed, addr, n);
                    let before: Vec<usize> = hits.iter().map(|h| h.lock().unwrap().len()).collect();
                    let handled = match write {
                        Some(v) => mmio.write(addr, &v.to_le_bytes()[..n]),
                        None => {
                            let mut data = vec![0u8; n];
                            let handled = mmio.read(addr, &mut data);
                            let fill = if handled { 0x5a } else { 0xff };
                            assert!(data.iter().all(|&b| b == fill));
                            handled
                        }
                    };
                    assert_eq!(handled, expect.is_some(), "access {addr:#x}+{n}");
                    for (i, h) in hits.iter().enumerate() {
                        let h = h.lock().unwrap();
                        match expect {
                            Some((j, off)) if i == j => {
                                assert_eq!(h.len(), before[i] + 1);
                                assert_eq!(h.last(), Some(&(off, n)));
                            }
                            _ => assert_eq!(h.len(), before[i], "device {i} got {addr:#x}+{n}"),
                        }
                    }
                }
                Access::Input(bytes) => {
                    forward_input(&mut &bytes[..], &serial);
                }
                Access::CtrlAltDel => {
                    kbd.lock().unwrap().send_ctrl_alt_del();
                }
            }
        }
        drop(pio);
        let got = std::fs::read(&path).expect("the serial output reads back");
        kiln_fuzz::debug(|| {
            format!(
                "serial wrote {got:?}; {} resets",
                resets.load(Ordering::SeqCst)
            )
        });
        // What went out is what the guest transmitted, in order (the bucket drops some).
        let mut rest = written_out.iter();
        for b in &got {
            assert!(
                rest.any(|w| w == b),
                "COM1 wrote {b:#x}, which the guest did not transmit"
            );
        }
        // (Writes of the output port can pull the reset line too.)
        assert!(
            resets.load(Ordering::SeqCst) >= reset_commands,
            "{reset_commands} CPU reset commands, {} resets",
            resets.load(Ordering::SeqCst)
        );
    });
});
