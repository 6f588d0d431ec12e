//! The scenarios, selected by `kiln.test=NAME` on the command line (default `print`).
//!
//! A scenario prints its lines and returns; the caller then prints `KILN-TINY: done` and
//! ends the VM. Scenarios that end the VM themselves (`reset`, `triple`) or never end
//! (`hang`, `halt`) do not return. To add one: write a module with a
//! `pub fn run(info: &BootInfo, con: &mut Console)` and add a row to [`SCENARIOS`].

mod balloon;
mod balloon_free;
mod blk;
mod boot;
mod bus;
mod count;
mod cpuid;
mod cpus;
mod faults;
mod hostile;
mod memmap;
mod mmds;
mod msr;
mod net;
mod pci;
mod pit;
mod pmem;
mod ports;
mod print;
mod rng;
mod storm;
mod ticks;
mod vmem;
mod vmem_snap;
mod vsock;

use crate::boot_info::BootInfo;
use crate::serial::Console;

pub use faults::{I8042_COMMAND_PORT as RESET_PORT, I8042_RESET as RESET_VALUE};

/// Command-line key selecting the scenario.
pub const PARAM: &[u8] = b"kiln.test";
/// Scenario run when the command line names none.
pub const DEFAULT: &[u8] = b"print";

type Run = fn(&BootInfo, &mut Console);

/// Every scenario by name.
const SCENARIOS: &[(&[u8], Run)] = &[
    (b"print", print::run),
    (b"boot", boot::run),
    (b"memmap", memmap::run),
    (b"cpuid", cpuid::run),
    (b"msr", msr::run),
    (b"cpus", cpus::run),
    (b"reset", faults::reset),
    (b"triple", faults::triple),
    (b"hang", faults::hang),
    (b"halt", faults::halt),
    (b"ports", ports::run),
    (b"ticks", ticks::run),
    (b"pit", pit::run),
    (b"count", count::run),
    (b"blk-read", blk::run_read),
    (b"blk-write", blk::run_write),
    (b"blk-ro", blk::run_ro),
    (b"blk-oob", blk::run_oob),
    (b"blk-flush", blk::run_flush),
    (b"blk-id", blk::run_id),
    (b"blk-swap", blk::run_swap),
    (b"blk-burst", blk::run_burst),
    (b"net-tx", net::run_tx),
    (b"net-rx", net::run_rx),
    (b"mmds", mmds::run),
    (b"mmds-hostile", mmds::run_hostile),
    (b"virtio-loop", hostile::blk::run_loop),
    (b"virtio-oob", hostile::blk::run_oob),
    (b"virtio-qsize", hostile::blk::run_qsize),
    (b"virtio-kicks", hostile::blk::run_kicks),
    (b"virtio-mmio-junk", hostile::blk::run_mmio_junk),
    (b"vsock-connect", vsock::run_connect),
    (b"vsock-listen", vsock::run_listen),
    (b"vsock-bad", vsock::run_bad),
    (b"virtio-giant", hostile::giant::run),
    (b"virtio-wrap", hostile::wrap::run),
    (b"virtio-config", hostile::config::run),
    (b"net-hostile", hostile::net::run),
    (b"bus-junk", bus::run_junk),
    (b"legacy-junk", bus::run_legacy),
    (b"irq-storm", storm::run),
    (b"rng-read", rng::run_read),
    (b"rng-hostile", hostile::rng::run),
    (b"balloon", balloon::run),
    (b"balloon-hostile", hostile::balloon::run),
    (b"balloon-free", balloon_free::run),
    (b"balloon-free-hostile", hostile::balloon_free::run),
    (b"pci-scan", pci::run_scan),
    (b"pci-snap", pci::run_snap),
    (b"pci-hostile", hostile::pci::run),
    (b"vmem", vmem::run),
    (b"vmem-hostile", hostile::vmem::run),
    (b"vmem-snap", vmem_snap::run),
    (b"pmem", pmem::run),
    (b"pmem-pci", pmem::run_pci),
    (b"pmem-watch", pmem::run_watch),
    (b"pmem-hostile", hostile::pmem::run),
];

/// Runs the scenario named `name`, or reports that there is none by that name.
pub fn run(name: &[u8], info: &BootInfo, con: &mut Console) {
    match SCENARIOS.iter().find(|(n, _)| *n == name) {
        Some((_, scenario)) => scenario(info, con),
        None => con.error().s("unknown scenario=").escaped(name).end(),
    }
}
