//! `pmem` (virtio-mmio) and `pmem-pci` (`--enable-pci`): the first virtio-pmem device,
//! read and written through its window. `pmem` prints `pmem base=0x.. start=0x..
//! size=0x.. features=0x..`; `pmem-pci` lists the PCI functions as `pci-scan` does, starts
//! the first virtio-pmem function (0x105b, no MSI-X vector: the guest polls) and prints
//! `pmem pci slot=N start=0x.. size=0x..`. Both then map the window (`pmem mapped
//! len=0x..`) and print
//!
//! * `pmem read len=L sum=0x.. head=<first 16 bytes in hex>`: the window's first
//!   `kiln.len=L` bytes (default 64, at most 4096), as the host file has them;
//! * `pmem wrote offset=O readback=<16 bytes in hex>`: after writing `KILN-PMEM-WRITE!`
//!   at `kiln.offset=O` (default 4096; a read-only device drops the writes, so the
//!   read-back shows the file's bytes);
//! * `pmem flush used=U status=0x..`: a flush request (status 0: the file is durable);
//! * `pmem tail byte=0x..`: the byte at `kiln.tail=T` (default 0; past the file's end,
//!   in the zero-filled rest of the 2 MiB window).
//!
//! `pmem-watch` (snapshots): after `pmem base=...` and `pmem mapped`, watches the window's
//! first 16 bytes (each wait at most `kiln.wait=S` seconds, default 60) and, each time they
//! change, up to `kiln.count=C` times (default 2), prints `pmem watch n=N head=<hex>` then
//! flushes (`pmem watch flush used=U status=0x..`); the first line is the bytes as found, a
//! change is printed once two reads ~20 ms apart agree (the host may be writing).
//!
//! The hostile driver is `pmem-hostile` (`hostile::pmem`).

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::Console;
use crate::virtio::pci::{self as vpci, PciDev};
use crate::virtio::pmem::{flush_chain, map_window, read_byte, write_byte, Pmem};
use crate::virtio::ring::{ring, Ring, RingExt, QUEUE_SIZE_U16};
use crate::virtio::{fnv1a, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, WAIT_CYCLES};
use kiln_guest_boot::cmdline::param_num;

/// What a scenario writes into the window.
pub const PATTERN: &[u8; 16] = b"KILN-PMEM-WRITE!";
/// The PCI device id of virtio-pmem (0x1040 + 27).
const PCI_DEVICE_PMEM: u16 = vpci::DEVICE_BASE + 27;
/// TSC cycles (~20 ms) between the reads that show a host write is complete.
const SETTLE: u64 = 50_000_000;

/// Finds, starts and maps the first virtio-pmem device, printing it (or an error line).
pub fn open(info: &BootInfo, con: &mut Console) -> Option<Pmem> {
    let p = match Pmem::open(info.cmdline) {
        Ok(p) => p,
        Err(0) => {
            con.error().s("no virtio-pmem device").end();
            return None;
        }
        Err(status) => {
            con.error()
                .s("virtio-pmem refused to start status=")
                .hex(status.into())
                .end();
            return None;
        }
    };
    con.line()
        .s("pmem base=")
        .hex(p.mmio.base())
        .s(" start=")
        .hex(p.start)
        .s(" size=")
        .hex(p.size)
        .s(" features=")
        .hex(p.features)
        .end();
    map(p.start, p.size, con)?;
    Some(p)
}

fn map(start: u64, size: u64, con: &mut Console) -> Option<u64> {
    let Some(mapped) = map_window(start, size) else {
        con.error().s("pmem window cannot be mapped").end();
        return None;
    };
    con.line().s("pmem mapped len=").hex(mapped).end();
    Some(mapped)
}

/// Posts a well-formed flush on `ring` (notified by `notify`) and prints `WHAT used=U
/// status=0x..`.
fn flush_on(ring: &mut Ring, notify: &dyn Fn(), con: &mut Console, what: &str) {
    flush_chain(ring);
    ring.push(0);
    notify();
    match ring.wait_used(WAIT_CYCLES) {
        Some(u) => con
            .line()
            .s(what)
            .s(" used=")
            .dec(u.len.into())
            .s(" status=")
            .hex(Pmem::word(4).into())
            .end(),
        None => con.error().s(what).s(" timed out").end(),
    }
}

/// Prints `WHAT used=U status=0x..` after a well-formed flush on an MMIO device.
pub fn flush(p: &mut Pmem, con: &mut Console, what: &str) {
    let mmio = p.mmio;
    flush_on(&mut p.ring, &|| mmio.notify(0), con, what);
}

/// Reads, writes, flushes and reads past the file, on the mapped window at `start`.
fn exercise(
    info: &BootInfo,
    con: &mut Console,
    start: u64,
    mapped: u64,
    ring: &mut Ring,
    notify: &dyn Fn(),
) {
    let len = param_num(info.cmdline, b"kiln.len", 64).clamp(1, 4096);
    let mut data = [0u8; 4096];
    for (i, b) in data.iter_mut().enumerate().take(len as usize) {
        *b = read_byte(start, i as u64);
    }
    let line = con
        .line()
        .s("pmem read len=")
        .dec(len)
        .s(" sum=")
        .hex(fnv1a(&data[..len as usize]).into())
        .s(" head=");
    super::blk::hex_bytes(line, &data[..16]).end();
    let offset = param_num(info.cmdline, b"kiln.offset", 4096).min(mapped - 16);
    for (i, &b) in PATTERN.iter().enumerate() {
        write_byte(start, offset + i as u64, b);
    }
    let mut back = [0u8; 16];
    for (i, b) in back.iter_mut().enumerate() {
        *b = read_byte(start, offset + i as u64);
    }
    let line = con
        .line()
        .s("pmem wrote offset=")
        .dec(offset)
        .s(" readback=");
    super::blk::hex_bytes(line, &back).end();
    flush_on(ring, notify, con, "pmem flush");
    let tail = param_num(info.cmdline, b"kiln.tail", 0).min(mapped - 1);
    con.line()
        .s("pmem tail byte=")
        .hex(read_byte(start, tail).into())
        .end();
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let Some(mut p) = open(info, con) else { return };
    let mapped = p.size.min(1 << 30);
    let mmio = p.mmio;
    exercise(info, con, p.start, mapped, &mut p.ring, &|| mmio.notify(0));
}

pub fn run_pci(info: &BootInfo, con: &mut Console) {
    if !super::pci::probe_bus(info, con) {
        return;
    }
    let (_, found) = super::pci::scan(con, PCI_DEVICE_PMEM);
    let Some(d) = found.filter(PciDev::usable) else {
        con.error().s("no usable virtio-pmem function").end();
        return;
    };
    d.enable();
    d.negotiate();
    let mut r = ring(0);
    d.setup_queue(0, &r, QUEUE_SIZE_U16, vpci::NO_VECTOR);
    let status = d.driver_ok();
    if status & STATUS_DRIVER_OK == 0 || status & STATUS_NEEDS_RESET != 0 {
        con.error()
            .s("virtio-pmem refused to start status=")
            .hex(status.into())
            .end();
        return;
    }
    let cfg = d.device.unwrap_or(0);
    let word = |off: u64| d.read(cfg + off, 4);
    let start = word(0) | word(4) << 32;
    let size = word(8) | word(12) << 32;
    con.line()
        .s("pmem pci slot=")
        .dec(d.slot.into())
        .s(" start=")
        .hex(start)
        .s(" size=")
        .hex(size)
        .end();
    let Some(mapped) = map(start, size, con) else {
        return;
    };
    exercise(info, con, start, mapped, &mut r, &|| d.notify(0));
}

pub fn run_watch(info: &BootInfo, con: &mut Console) {
    let Some(mut p) = open(info, con) else { return };
    let count = param_num(info.cmdline, b"kiln.count", 2).clamp(1, 16);
    let wait = param_num(info.cmdline, b"kiln.wait", 60).clamp(1, 600) * WAIT_CYCLES;
    let head = |start: u64| {
        let mut h = [0u8; 16];
        for (i, b) in h.iter_mut().enumerate() {
            *b = read_byte(start, i as u64);
        }
        h
    };
    let mut seen = head(p.start);
    for n in 0..=count {
        if n > 0 {
            let since = rdtsc();
            loop {
                let mut now = head(p.start);
                if now != seen {
                    // The host writes while the guest reads: wait until two reads a few
                    // milliseconds apart agree.
                    loop {
                        let t = rdtsc();
                        while rdtsc().wrapping_sub(t) < SETTLE {}
                        let again = head(p.start);
                        if again == now {
                            break;
                        }
                        now = again;
                    }
                    seen = now;
                    break;
                }
                if rdtsc().wrapping_sub(since) > wait {
                    con.error().s("pmem watch: no change n=").dec(n).end();
                    return;
                }
            }
        }
        let line = con.line().s("pmem watch n=").dec(n).s(" head=");
        super::blk::hex_bytes(line, &seen).end();
        flush(&mut p, con, "pmem watch flush");
    }
}
