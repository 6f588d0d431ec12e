//! The kernel command line: the boot arguments, the `virtio_mmio.device=` entry of every
//! virtio-mmio device (the kernel finds its devices this way), then the init arguments.

use super::LoadError;
use crate::arch::x86_64::layout::{MmioSlot, CMDLINE_MAX_SIZE};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;

/// The kernel command line: `boot_args` (the part before ` -- `), a `virtio_mmio.device=`
/// entry per device window (in the order given), then the init arguments (after ` -- `).
pub fn build_cmdline(boot_args: &str, virtio_mmio: &[MmioSlot]) -> Result<Cmdline, LoadError> {
    let (kernel_args, init_args) = match boot_args.split_once(" -- ") {
        Some((k, i)) => (k, i),
        None => match boot_args.strip_prefix("-- ") {
            Some(i) => ("", i),
            None => (boot_args, ""),
        },
    };
    let explain = |e: linux_loader::cmdline::Error| match e {
        linux_loader::cmdline::Error::TooLarge => LoadError::Cmdline(format!(
            "the command line is longer than {} bytes",
            CMDLINE_MAX_SIZE - 1
        )),
        linux_loader::cmdline::Error::InvalidAscii => {
            LoadError::Cmdline("the command line may only hold printable ASCII characters".into())
        }
        other => LoadError::Cmdline(other.to_string()),
    };
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(explain)?;
    if !kernel_args.trim().is_empty() {
        cl.insert_str(kernel_args).map_err(explain)?;
    }
    for s in virtio_mmio {
        cl.add_virtio_mmio_device(s.size, GuestAddress(s.base), s.irq, None)
            .map_err(|e| LoadError::DeviceEntry {
                entry: format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    s.size >> 10,
                    s.base,
                    s.irq
                ),
                reason: e.to_string(),
            })?;
    }
    if !init_args.trim().is_empty() {
        cl.insert_init_args(init_args).map_err(explain)?;
    }
    // Catches "init arguments but no kernel arguments" before the guest would.
    cl.as_cstring().map_err(explain)?;
    Ok(cl)
}
