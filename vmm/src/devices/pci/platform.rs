//! What the PCI devices ask of the hypervisor while the guest runs: MSI routes for their
//! vectors' GSIs (KVM_SET_GSI_ROUTING) and ioeventfds that follow a BAR the guest moves
//! (KVM_IOEVENTFD).
//!
//! [`Platform`] is the interface (the tests and the fuzz target use [`NoPlatform`]);
//! [`KvmPlatform`] is KVM's, on a duplicate of the VM file descriptor that the builder
//! hands over once the VM exists ([`KvmPlatform::connect`]); routes set before that are
//! installed then. KVM_SET_GSI_ROUTING replaces the whole table, so the table always
//! carries KVM's default routes of the 24 IOAPIC pins (and the 16 PIC lines) that the
//! legacy devices use, with the MSI routes after them.

use crate::metrics::METRICS;
use crate::sync::lock;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use vmm_sys_util::eventfd::EventFd;

/// First GSI after the IOAPIC's 24 pins: where MSI vectors' GSIs start.
pub const MSI_GSI_START: u32 = 24;
/// Most GSIs KVM routes (KVM_MAX_IRQ_ROUTES).
pub const MSI_GSI_END: u32 = 4096;
const IOAPIC_PINS: u32 = 24;
const PIC_LINES: u32 = 16;

/// An MSI message: where the device writes, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("KVM_SET_GSI_ROUTING failed ({routes} routes): {source}")]
    Routing {
        routes: usize,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IOEVENTFD failed for MMIO address {addr:#x}: {source}")]
    Ioevent {
        addr: u64,
        source: kvm_ioctls::Error,
    },
}

/// The hypervisor side of the PCI devices.
pub trait Platform: Send + Sync {
    /// Routes `gsi` to `msg`, or removes its route.
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), PlatformError>;
    /// Moves `evt`'s ioeventfd (any width, any value) from `from` to `to`.
    fn move_ioevent(
        &self,
        evt: &EventFd,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<(), PlatformError>;
}

/// A platform that does nothing (unit tests, fuzzing).
#[derive(Debug, Default)]
pub struct NoPlatform;

impl Platform for NoPlatform {
    fn set_msi_route(&self, _: u32, _: Option<MsiMessage>) -> Result<(), PlatformError> {
        Ok(())
    }
    fn move_ioevent(
        &self,
        _: &EventFd,
        _: Option<u64>,
        _: Option<u64>,
    ) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// KVM's platform.
#[derive(Default)]
pub struct KvmPlatform {
    vm: OnceLock<VmFd>,
    routes: Mutex<BTreeMap<u32, MsiMessage>>,
}

impl KvmPlatform {
    /// From now on, changes go to `vm` (a duplicate of the VM's descriptor); the routes
    /// set so far are installed.
    pub fn connect(&self, vm: VmFd) -> Result<(), PlatformError> {
        let _ = self.vm.set(vm);
        self.install(&lock(&self.routes))
    }

    fn install(&self, routes: &BTreeMap<u32, MsiMessage>) -> Result<(), PlatformError> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        let mut entries = default_routes();
        for (&gsi, m) in routes {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = (m.address & 0xffff_ffff) as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let n = entries.len();
        let routing =
            KvmIrqRouting::from_entries(&entries).map_err(|_| PlatformError::Routing {
                routes: n,
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
        vm.set_gsi_routing(&routing)
            .map_err(|source| PlatformError::Routing { routes: n, source })
    }
}

/// KVM's default routing of an x86 VM with an in-kernel irqchip: GSI n to IOAPIC pin n,
/// and GSIs 0-15 also to the PICs.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let chip = |irqchip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = irqchip;
            e.u.irqchip.pin = pin;
            e
        };
        if gsi < PIC_LINES {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(chip(pic, gsi % 8));
        }
        v.push(chip(KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

impl Platform for KvmPlatform {
    fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> Result<(), PlatformError> {
        let mut routes = lock(&self.routes);
        let changed = match msg {
            Some(m) => routes.insert(gsi, m) != Some(m),
            None => routes.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        self.install(&routes)
            .inspect_err(|_| METRICS.pci.kvm_fails.inc())
    }

    fn move_ioevent(
        &self,
        evt: &EventFd,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<(), PlatformError> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        if let Some(addr) = from {
            // Gone already or never registered (a refused move): nothing to undo.
            let _ = vm.unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
        if let Some(addr) = to {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
                .map_err(|source| {
                    METRICS.pci.kvm_fails.inc();
                    PlatformError::Ioevent { addr, source }
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_the_pics_and_the_ioapic() {
        let r = default_routes();
        assert_eq!(r.len(), 16 + 24);
        // SAFETY-free reads of the union through the accessor used by KVM: irqchip routes.
        assert!(r.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        assert_eq!(r.iter().filter(|e| e.gsi == 4).count(), 2);
        assert_eq!(r.iter().filter(|e| e.gsi == 20).count(), 1);
    }

    #[test]
    fn routes_before_connecting_are_kept() {
        let p = KvmPlatform::default();
        p.set_msi_route(
            24,
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41,
            }),
        )
        .unwrap();
        p.set_msi_route(25, None).unwrap();
        assert_eq!(lock(&p.routes).len(), 1);
        p.move_ioevent(&EventFd::new(0).unwrap(), None, Some(0xe000_3000))
            .unwrap();
    }
}
