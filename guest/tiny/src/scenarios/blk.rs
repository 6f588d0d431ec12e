//! virtio-blk scenarios. Each finds the virtio-blk device (the `kiln.dev=N`-th, default 0)
//! among the command line's `virtio_mmio.device=` entries, starts it and prints
//! `blk base=0x.. irq=N features=0x.. capacity=N`, then:
//!
//! * `blk-read`: reads `kiln.count=C` (1 or 2) sectors from `kiln.sector=S` (default 0):
//!   `blk read sector=S count=C status=N len=N cycles=N sum=0x.. head=<first 16 bytes in
//!   hex>` (`sum`: FNV-1a 32 of the data; `cycles`: TSC cycles from building the request to
//!   its used entry; `sum` and `head` only for status 0).
//! * `blk-write`: writes [`pattern`] to C sectors from S, then reads them back:
//!   `blk write sector=S count=C status=N len=N cycles=N`, a `blk read` line, then
//!   `blk readback sector=S match=1`.
//! * `blk-ro`: `blk ro=0|1`, a write of one sector at S (refused on a read-only drive:
//!   status 1), then a read of it.
//! * `blk-oob`: a read of the sector just past the end, a 2-sector write straddling the end,
//!   a read of sector 2^64-1 (all status 1), then a read of sector 0 (status 0).
//! * `blk-flush`: `blk flush status=N`.
//! * `blk-id`: `blk id=<the device's id> status=N`.
//! * `blk-swap`: a `blk read` of sector 0, then `blk waiting generation=N`, then waits (about
//!   20 s) for the configuration generation to change (the host swapped the backing file):
//!   `blk config generation=N capacity=N interrupt=0x..`, and a `blk read` of sector 0
//!   again.
//!
//! * `blk-burst`: `kiln.count=C` one-sector reads of sector S (default 4, at most 64), one
//!   after the other, each waited for at most `kiln.wait=W` seconds (default 1): `blk burst
//!   n=I status=N cycles=N` each (TSC cycles of that read), then `blk burst done count=C
//!   cycles=N` (all of them). A rate-limited drive spaces them out.
//!
//! Statuses: 0 OK, 1 IOERR, 2 UNSUPP, 255 never written; `len` is the used length.

// Register values, sector numbers and lengths are deliberately cut to the width the device
// or the ring field has (32, 16 or 8 bits); every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use crate::arch::rdtsc;
use crate::boot_info::BootInfo;
use crate::serial::{Console, Line};
use crate::virtio::blk::{
    Blk, StartError, F_RO, MAX_SECTORS, SECTOR, T_FLUSH, T_GET_ID, T_IN, T_OUT,
};
use crate::virtio::{fnv1a, WAIT_CYCLES};
use kiln_guest_boot::cmdline::param_num;

/// Byte `i` of a `blk-write` request at `sector` (the tests compute the same).
pub fn pattern(sector: u64, i: usize) -> u8 {
    (i as u8) ^ (sector as u8) ^ 0x4b
}

/// Finds and starts the scenario's device, printing it (or an error line).
pub fn open(info: &BootInfo, con: &mut Console) -> Option<Blk> {
    let index = param_num(info.cmdline, b"kiln.dev", 0) as u32;
    match Blk::open(info.cmdline, index) {
        Ok(b) => {
            con.line()
                .s("blk base=")
                .hex(b.mmio.base())
                .s(" irq=")
                .dec(b.mmio.irq().into())
                .s(" features=")
                .hex(b.features)
                .s(" capacity=")
                .dec(b.capacity())
                .end();
            Some(b)
        }
        Err(StartError::NotFound) => {
            con.error()
                .s("no virtio-blk device index=")
                .dec(index.into())
                .end();
            None
        }
        Err(StartError::Refused(status)) => {
            con.error()
                .s("virtio-blk refused to start status=")
                .hex(status.into())
                .end();
            None
        }
    }
}

fn sector_args(info: &BootInfo) -> (u64, usize) {
    let sector = param_num(info.cmdline, b"kiln.sector", 0);
    let count = (param_num(info.cmdline, b"kiln.count", 1) as usize).clamp(1, MAX_SECTORS);
    (sector, count)
}

/// Appends `bytes` as lowercase hex digits without separators.
pub fn hex_bytes<'a>(mut line: Line<'a>, bytes: &[u8]) -> Line<'a> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        let pair = [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]];
        line = line.escaped(&pair);
    }
    line
}

/// Sends one request of `kind` for `count` sectors at `sector`, timed, and starts its line,
/// `blk WHAT sector=S count=C status=N len=N cycles=N`, for the caller to finish; or prints
/// `blk WHAT timed out sector=S` as an error.
fn request<'a>(
    b: &mut Blk,
    con: &'a mut Console,
    what: &str,
    kind: u32,
    sector: u64,
    count: usize,
) -> Option<(Line<'a>, u8)> {
    let start = rdtsc();
    let request = b.request(kind, sector, (count * SECTOR) as u32);
    let cycles = rdtsc().wrapping_sub(start);
    let Some((status, used)) = request else {
        con.error()
            .s("blk ")
            .s(what)
            .s(" timed out sector=")
            .dec(sector)
            .end();
        return None;
    };
    let line = con
        .line()
        .s("blk ")
        .s(what)
        .s(" sector=")
        .dec(sector)
        .s(" count=")
        .dec(count as u64)
        .s(" status=")
        .dec(status.into())
        .s(" len=")
        .dec(used.into())
        .s(" cycles=")
        .dec(cycles);
    Some((line, status))
}

/// Reads `count` sectors at `sector` and prints the `blk read` line; returns the status.
pub fn read(b: &mut Blk, con: &mut Console, sector: u64, count: usize) -> Option<u8> {
    Blk::data().fill(0);
    let (line, status) = request(b, con, "read", T_IN, sector, count)?;
    let data = &Blk::data()[..count * SECTOR];
    if status == 0 {
        hex_bytes(
            line.s(" sum=").hex(fnv1a(data).into()).s(" head="),
            &data[..16],
        )
        .end();
    } else {
        line.end();
    }
    Some(status)
}

/// Writes [`pattern`] to `count` sectors at `sector` and prints the `blk write` line.
pub fn write(b: &mut Blk, con: &mut Console, sector: u64, count: usize) -> Option<u8> {
    for (i, byte) in Blk::data()[..count * SECTOR].iter_mut().enumerate() {
        *byte = pattern(sector, i);
    }
    let (line, status) = request(b, con, "write", T_OUT, sector, count)?;
    line.end();
    Some(status)
}

pub fn run_read(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let (sector, count) = sector_args(info);
    read(&mut b, con, sector, count);
}

pub fn run_write(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let (sector, count) = sector_args(info);
    if write(&mut b, con, sector, count) != Some(0) {
        return;
    }
    if read(&mut b, con, sector, count) == Some(0) {
        let ok = Blk::data()[..count * SECTOR]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == pattern(sector, i));
        con.line()
            .s("blk readback sector=")
            .dec(sector)
            .s(" match=")
            .dec(ok.into())
            .end();
    }
}

pub fn run_ro(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    con.line()
        .s("blk ro=")
        .dec(u64::from(b.features & F_RO != 0))
        .end();
    let (sector, _) = sector_args(info);
    write(&mut b, con, sector, 1);
    read(&mut b, con, sector, 1);
}

pub fn run_oob(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let capacity = b.capacity();
    read(&mut b, con, capacity, 1);
    write(&mut b, con, capacity.wrapping_sub(1), 2);
    read(&mut b, con, u64::MAX, 1);
    read(&mut b, con, 0, 1);
}

pub fn run_flush(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    match b.request(T_FLUSH, 0, 0) {
        Some((status, _)) => con.line().s("blk flush status=").dec(status.into()).end(),
        None => con.error().s("blk flush timed out").end(),
    }
}

pub fn run_id(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    Blk::data().fill(0);
    match b.request(T_GET_ID, 0, 20) {
        Some((status, _)) => {
            let id = &Blk::data()[..20];
            let end = id.iter().position(|&c| c == 0).unwrap_or(id.len());
            con.line()
                .s("blk id=")
                .escaped(&id[..end])
                .s(" status=")
                .dec(status.into())
                .end();
        }
        None => con.error().s("blk get-id timed out").end(),
    }
}

/// About 20 s at 2-3 GHz.
const SWAP_WAIT_CYCLES: u64 = 50_000_000_000;

pub fn run_swap(info: &BootInfo, con: &mut Console) {
    use crate::virtio::{REG_CONFIG_GENERATION, REG_INTERRUPT_ACK, REG_INTERRUPT_STATUS};
    let Some(mut b) = open(info, con) else { return };
    read(&mut b, con, 0, 1);
    let generation = b.mmio.read(REG_CONFIG_GENERATION);
    con.line()
        .s("blk waiting generation=")
        .dec(generation.into())
        .end();
    let start = rdtsc();
    while b.mmio.read(REG_CONFIG_GENERATION) == generation {
        if rdtsc().wrapping_sub(start) > SWAP_WAIT_CYCLES {
            con.error().s("blk configuration never changed").end();
            return;
        }
    }
    let interrupt = b.mmio.read(REG_INTERRUPT_STATUS);
    b.mmio.write(REG_INTERRUPT_ACK, interrupt);
    con.line()
        .s("blk config generation=")
        .dec(b.mmio.read(REG_CONFIG_GENERATION).into())
        .s(" capacity=")
        .dec(b.capacity())
        .s(" interrupt=")
        .hex(interrupt.into())
        .end();
    read(&mut b, con, 0, 1);
}

pub fn run_burst(info: &BootInfo, con: &mut Console) {
    let Some(mut b) = open(info, con) else { return };
    let (sector, _) = sector_args(info);
    let count = param_num(info.cmdline, b"kiln.count", 4).clamp(1, 64);
    let wait = param_num(info.cmdline, b"kiln.wait", 1).clamp(1, 60) * WAIT_CYCLES;
    let first = rdtsc();
    for n in 0..count {
        let start = rdtsc();
        let Some((status, _)) = b.request_wait(T_IN, sector, SECTOR as u32, wait) else {
            con.error().s("blk burst timed out n=").dec(n).end();
            return;
        };
        con.line()
            .s("blk burst n=")
            .dec(n)
            .s(" status=")
            .dec(status.into())
            .s(" cycles=")
            .dec(rdtsc().wrapping_sub(start))
            .end();
    }
    con.line()
        .s("blk burst done count=")
        .dec(count)
        .s(" cycles=")
        .dec(rdtsc().wrapping_sub(first))
        .end();
}
