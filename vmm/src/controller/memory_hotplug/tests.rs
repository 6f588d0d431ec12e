use super::*;
use crate::api::RequestError;
use crate::arch::x86_64::layout::DEVICE_MEMORY_START;
use crate::controller::stand_in::StandInVm;
use crate::controller::Outcome;
use crate::devices::virtio::mem::F_UNPLUGGED_INACCESSIBLE;
use crate::devices::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::resources::{MemoryHotplugConfig, MemoryHotplugSizeUpdate, VmResources};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

fn reply(c: &mut Controller, req: ApiRequest, vm: Option<&mut dyn Microvm>) -> Reply {
    match c.handle(req, vm) {
        Outcome::Reply(r) => r,
        _ => panic!("not a reply"),
    }
}

fn refused(r: Reply) -> String {
    match RequestError::from(r.unwrap_err()) {
        RequestError::Refused(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn hotplug_requests_follow_firecracker_pre_and_post_boot() {
    let mut c = Controller::new("h", VmResources::default());
    let cfg = MemoryHotplugConfig {
        total_size_mib: 256,
        block_size_mib: 2,
        slot_size_mib: 128,
    };
    assert!(reply(&mut c, ApiRequest::PutMemoryHotplug(cfg), None).is_ok());
    assert_eq!(c.resources().memory_hotplug, Some(cfg));
    let bad = MemoryHotplugConfig {
        block_size_mib: 3,
        ..cfg
    };
    assert_eq!(
        refused(reply(&mut c, ApiRequest::PutMemoryHotplug(bad), None)),
        "memory-hotplug: block_size_mib 3 is not a power of 2"
    );
    assert_eq!(
        refused(reply(&mut c, ApiRequest::GetMemoryHotplug, None)),
        "GET /hotplug/memory is only possible after InstanceStart, and the microVM has not started yet"
    );
    let upd = MemoryHotplugSizeUpdate {
        requested_size_mib: 2,
    };
    assert_eq!(
        refused(reply(&mut c, ApiRequest::PatchMemoryHotplug(upd), None)),
        "PATCH /hotplug/memory is only possible after InstanceStart, and the microVM has not started yet"
    );
    c.started = true;
    let mut vm = StandInVm::default();
    assert_eq!(
        refused(reply(&mut c, ApiRequest::PutMemoryHotplug(cfg), Some(&mut vm))),
        "PUT /hotplug/memory is only possible before InstanceStart, and the microVM has already started"
    );
    assert_eq!(
        refused(reply(&mut c, ApiRequest::GetMemoryHotplug, Some(&mut vm))),
        "no memory hot-plug device is configured (PUT /hotplug/memory before InstanceStart)"
    );
}

/// A running microVM whose only part is a started virtio-mem device (256 MiB, 2 MiB
/// blocks, 128 MiB slots, no KVM).
fn running_device() -> (StandInVm, Arc<Interrupt>) {
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let m =
        crate::vstate::memory::add_hotplug_region(&ram, DEVICE_MEMORY_START, 256 << 20).unwrap();
    let mut dev = VirtioMem::new(&m, DEVICE_MEMORY_START, 256 << 20, 2 << 20, 128 << 20).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let mut q = Queue::new(16).unwrap();
    q.set_ready(true);
    dev.activate(Activation {
        mem: m,
        queues: vec![q],
        features: VIRTIO_F_VERSION_1 | F_UNPLUGGED_INACCESSIBLE,
        interrupt: irq.clone(),
    })
    .unwrap();
    let vm = StandInVm {
        virtio_mem: Some(Arc::new(Mutex::new(dev))),
        ..StandInVm::default()
    };
    (vm, irq)
}

#[test]
fn patch_and_get_reach_the_running_device() {
    let mut c = Controller::new("h", VmResources::default());
    c.started = true;
    let (mut vm, irq) = running_device();
    let status = |c: &mut Controller, vm: &mut StandInVm| match reply(
        c,
        ApiRequest::GetMemoryHotplug,
        Some(vm),
    )
    .unwrap()
    {
        VmmData::Json(v) => serde_json::from_str::<serde_json::Value>(&v).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        status(&mut c, &mut vm),
        serde_json::json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
            "plugged_size_mib": 0, "requested_size_mib": 0})
    );
    let patch = |n| {
        ApiRequest::PatchMemoryHotplug(MemoryHotplugSizeUpdate {
            requested_size_mib: n,
        })
    };
    assert_eq!(
        refused(reply(&mut c, patch(3), Some(&mut vm))),
        "memory-hotplug: requested_size_mib 3 is not a multiple of block_size_mib (2 MiB)"
    );
    assert_eq!(
        refused(reply(&mut c, patch(512), Some(&mut vm))),
        "memory-hotplug: requested_size_mib 512 is more than total_size_mib (256 MiB)"
    );
    reply(&mut c, patch(64), Some(&mut vm)).unwrap();
    assert_eq!(irq.generation(), 1, "the driver is told");
    assert_eq!(status(&mut c, &mut vm)["requested_size_mib"], 64);
}
