//! The virtio-mmio transport (`vmm/src/devices/virtio/mmio/`) as a guest reaches it: MMIO
//! reads and writes of any offset and width on the bus (`devices::bus::Bus`, as KVM hands
//! them to a vCPU thread), inside the device's window, across its end and beyond it: the
//! register file, the status state machine (in order, out of order, FAILED, reset), feature
//! negotiation, queue set-up with guest-chosen sizes and ring addresses, configuration space,
//! QueueNotify and InterruptACK, with the device behind it (virtio-blk, -rng, -net on a tap
//! stand-in, or -vsock) started, run on the VMM thread's event loop and reset.
//!
//! Input (structured, `arbitrary`): which device, then guest operations (`kiln_fuzz::driver`)
//! and identity checks.
//!
//! Checks, besides the machine's (writes only in device-writable buffers and used rings,
//! used entries only for heads the ring held, DRIVER_OK exactly while the device runs,
//! NEEDS_RESET instead of a panic): the identity registers never change, QueueNumMax is the
//! device's for every queue it has and 0 beyond, a reset always reads back status 0 with the
//! device stopped, and configuration reads of any width at any offset are served.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{Driver, Op};
use kiln_fuzz::host::{tap_pair, vsock_dir};
use kiln_fuzz::machine::Machine;
use kiln_fuzz::MemFile;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use virtio_bindings::virtio_mmio as reg;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::mmio::{MMIO_MAGIC, MMIO_VERSION, VENDOR_ID};
use vmm::devices::virtio::net::Net;
use vmm::devices::virtio::rng::Entropy;
use vmm::devices::virtio::vsock::Vsock;
use vmm::devices::virtio::VirtioDevice;
use vmm::resources::{DriveConfig, MacAddr, NetworkInterfaceConfig, VsockConfig};

thread_local! {
    static DISK: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-disk"));
}

#[derive(Debug, Arbitrary)]
enum Device {
    Block {
        read_only: bool,
        sectors: u8,
    },
    Entropy,
    Net {
        mac: Option<[u8; 6]>,
        mtu: Option<u16>,
    },
    Vsock {
        cid: u32,
    },
}

#[derive(Debug, Arbitrary)]
enum Step {
    Guest(Op),
    /// Reads every identity register and each queue's QueueNumMax.
    Identity,
    /// Reads configuration space: `len % 9` bytes at `offset`.
    Config {
        offset: u8,
        len: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Case {
    device: Device,
    steps: Vec<Step>,
}

fn check_identity(m: &Machine, device_type: u32, max_sizes: &[u16]) {
    assert_eq!(m.read32(reg::VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(m.read32(reg::VIRTIO_MMIO_VERSION), MMIO_VERSION);
    assert_eq!(m.read32(reg::VIRTIO_MMIO_DEVICE_ID), device_type);
    assert_eq!(m.read32(reg::VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    // Selecting a queue changes what the driver reads, nothing else.
    for (i, &max) in max_sizes.iter().enumerate() {
        m.write32(reg::VIRTIO_MMIO_QUEUE_SEL, i as u32);
        assert_eq!(m.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(max));
    }
    m.write32(reg::VIRTIO_MMIO_QUEUE_SEL, max_sizes.len() as u32);
    assert_eq!(m.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

fn run<D: VirtioDevice + 'static>(dev: D, steps: &[Step]) {
    let device_type = dev.device_type();
    let max_sizes = dev.queue_max_sizes().to_vec();
    let (mut m, _spy) = Machine::new(dev);
    let mut driver = Driver::default();
    for step in steps {
        match step {
            Step::Guest(op) => {
                driver.apply(&mut m, op);
            }
            Step::Identity => check_identity(&m, device_type, &max_sizes),
            Step::Config { offset, len } => {
                let mut data = vec![0xa5u8; usize::from(len % 9)];
                m.read(0x100 + u64::from(*offset), &mut data);
            }
        }
        m.check_status();
    }
    m.run(2);
    check_identity(&m, device_type, &max_sizes);
    kiln_fuzz::debug(|| format!("status {:#x}", m.status()));
    driver.apply(&mut m, &Op::Reset);
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    match case.device {
        Device::Block { read_only, sectors } => DISK.with(|disk| {
            let mut disk = disk.borrow_mut();
            let path = disk.set(&vec![0u8; usize::from(sectors) * 512]).to_string();
            let cfg = DriveConfig {
                drive_id: "fuzz".into(),
                path_on_host: path,
                is_read_only: read_only,
                ..Default::default()
            };
            run(
                Block::new(&cfg).expect("the in-memory disk opens"),
                &case.steps,
            );
        }),
        Device::Entropy => run(Entropy::new(), &case.steps),
        Device::Net { mac, mtu } => {
            let cfg = NetworkInterfaceConfig {
                iface_id: "eth0".into(),
                host_dev_name: "fuzz-tap".into(),
                guest_mac: mac.map(MacAddr),
                mtu: mtu.map(|m| u64::from(m.max(68))),
                ..Default::default()
            };
            let (tap, _host) = tap_pair();
            run(Net::with_tap(&cfg, tap), &case.steps);
        }
        Device::Vsock { cid } => {
            let uds = vsock_dir().join("v.sock");
            let cfg = VsockConfig {
                vsock_id: None,
                guest_cid: cid.max(3),
                uds_path: uds.to_str().expect("a UTF-8 path").into(),
            };
            run(
                Vsock::new(&cfg).expect("the vsock socket binds"),
                &case.steps,
            );
        }
    }
});
