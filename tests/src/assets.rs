//! Kiln's Linux guest assets (built by scripts/assets.sh) and the kernel command line that
//! boots them on this kind of host. See guest/kernel/README.md.

use std::path::PathBuf;

/// The built guest assets, from `$KILN_CACHE/assets/current/`.
#[derive(Debug, Clone)]
pub struct LinuxAssets {
    /// The kernel as an ELF file with a PVH note: boot this one in tests (a bzImage runs its
    /// decompressor emulated on kvm_pvm hosts).
    pub vmlinux: PathBuf,
    /// The same kernel as `arch/x86/boot/bzImage` (LZ4-compressed, Linux boot protocol).
    pub bz_image: PathBuf,
    /// Uncompressed newc cpio holding `/init` (kiln-init) and `/dev`, `/proc`, `/sys`.
    pub initramfs: PathBuf,
    /// ext4 image with the same content, for `root=/dev/vda`. It is shared by every test:
    /// copy it before attaching it read-write.
    pub rootfs: PathBuf,
}

/// Work-arounds this host needs in the guest's command line (shared/notes/host-kvm.md): its
/// KVM (kvm_pvm) emulates guest ring 0 and fails on XSAVE-family instructions, `lock
/// cmpxchg16b` and the other features hidden here, whatever CPUID says.
macro_rules! host_workarounds {
    () => {
        "noxsave clearcpuid=popcnt,cx16,smap,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid"
    };
}

/// The same work-arounds, for callers that build their own command line.
pub const HOST_WORKAROUND_ARGS: &str = host_workarounds!();

/// Kernel command line for Kiln's VMM: serial console on ttyS0, a reset through the i8042
/// controller on reboot (`reboot=k`, which the VMM treats as the end of the VM), an immediate
/// reboot on panic, no PCI bus scan (`pci=off`: the devices are on virtio-mmio; the one
/// configuration read the kernel makes before parsing it is answered by the VMM), and
/// [`HOST_WORKAROUND_ARGS`]. Append `root=`, `init=`, `ip=` and `virtio_mmio.device=` as
/// needed; a microVM with `--enable-pci` needs a command line without `pci=off`.
pub const KERNEL_CMDLINE: &str = concat!(
    "console=ttyS0 reboot=k panic=-1 pci=off ",
    host_workarounds!()
);

/// Kernel command line for QEMU's `microvm` machine: as [`KERNEL_CMDLINE`] but rebooting by
/// triple fault (`reboot=t`), which ends QEMU when it runs with `-no-reboot`; microvm has no
/// i8042 reset line. QEMU adds the `virtio_mmio.device=` arguments itself.
pub const QEMU_MICROVM_CMDLINE: &str =
    concat!("console=ttyS0 reboot=t panic=-1 ", host_workarounds!());

/// Where scripts/assets.sh points at the current assets.
pub fn assets_dir() -> PathBuf {
    crate::cache_dir().join("assets").join("current")
}

/// The guest assets, panicking with a message naming what is missing when they are not built.
pub fn require_linux_assets() -> LinuxAssets {
    let dir = assets_dir();
    let assets = LinuxAssets {
        vmlinux: dir.join("vmlinux"),
        bz_image: dir.join("bzImage"),
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.ext4"),
    };
    let missing: Vec<String> = [
        &assets.vmlinux,
        &assets.bz_image,
        &assets.initramfs,
        &assets.rootfs,
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    assert!(
        missing.is_empty(),
        "MISSING PRECONDITION: Linux guest assets not built (missing: {}); run scripts/assets.sh \
         (the README's test command does)",
        missing.join(", ")
    );
    assets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_share_the_host_workarounds() {
        assert!(KERNEL_CMDLINE.ends_with(HOST_WORKAROUND_ARGS));
        assert!(QEMU_MICROVM_CMDLINE.ends_with(HOST_WORKAROUND_ARGS));
        assert!(KERNEL_CMDLINE.contains("reboot=k"));
        assert!(QEMU_MICROVM_CMDLINE.contains("reboot=t"));
    }
}
