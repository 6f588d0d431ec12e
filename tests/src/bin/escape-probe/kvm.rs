//! `/dev/kvm` abuse: a guest memory slot backed by host kernel memory, and KVM ioctls on a
//! device the jail grants no ioctls on.

use crate::sys::{check, open, verdict, Fd};
use crate::{Attempt, Outcome};

/// KVM_CREATE_VM: _IO(0xAE, 0x01).
const KVM_CREATE_VM: libc::Ioctl = 0xae01;
/// KVM_SET_USER_MEMORY_REGION: _IOW(0xAE, 0x46, struct kvm_userspace_memory_region).
const KVM_SET_USER_MEMORY_REGION: libc::Ioctl = 0x4020_ae46;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

pub const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "kvm.host-memory-slot",
        what: "back guest memory with host kernel memory (KVM_SET_USER_MEMORY_REGION at the kernel's direct map)",
        run: |_| host_memory_slot(),
    },
    Attempt {
        name: "kvm.ioctl-other-device",
        what: "a KVM ioctl (KVM_CREATE_VM) on /dev/urandom, which the jail grants no ioctls on",
        run: |_| {
            let fd = match Fd::from_ret(open("/dev/urandom", libc::O_RDONLY, 0)) {
                Ok(fd) => fd,
                Err(e) => return Outcome::Error(format!("open /dev/urandom: {e}")),
            };
            // SAFETY: an ioctl with an integer argument.
            let ret = unsafe { libc::ioctl(fd.0, KVM_CREATE_VM, 0) };
            verdict(ret.into(), true, "the ioctl reached the device")
        },
    },
];

fn host_memory_slot() -> Outcome {
    let kvm = match Fd::from_ret(open("/dev/kvm", libc::O_RDWR, 0)) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("open /dev/kvm: {e}")),
    };
    // SAFETY: an ioctl with an integer argument; the result is a new descriptor.
    let vm = match Fd::from_ret(unsafe { libc::ioctl(kvm.0, KVM_CREATE_VM, 0) }.into()) {
        Ok(fd) => fd,
        Err(e) => return Outcome::Error(format!("KVM_CREATE_VM: {e}")),
    };
    let region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 2 << 20,
        userspace_addr: 0xffff_8880_0000_0000,
    };
    // SAFETY: KVM reads one kvm_userspace_memory_region.
    let ret = unsafe { libc::ioctl(vm.0, KVM_SET_USER_MEMORY_REGION, &region) };
    match check(ret.into()) {
        Err(e) => Outcome::Blocked(e),
        Ok(_) => Outcome::Escaped("guest memory backed by host kernel addresses".into()),
    }
}
