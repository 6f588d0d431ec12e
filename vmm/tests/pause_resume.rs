//! `Vmm::pause`/`resume` really stop and restart guest code, on a real KVM VM.
//!
//! The guest is built here: 18 bytes of 64-bit code at 1 MiB that write 'x' to COM1, spin a
//! little and loop. Its serial output goes to a file whose growth shows whether it runs.
//! Needs /dev/kvm.

use kiln_tests::{elf, require_kvm, ScratchDir};
use std::path::Path;
use std::time::Duration;
use vmm::builder::{build_microvm, BuildOptions};
use vmm::devices::legacy::serial::SerialSink;
use vmm::exit::VmExit;
use vmm::loader::EntryPreference;
use vmm::resources::{BootSourceConfig, MachineConfig, VmResources};
use vmm::vmm::{VmState, VmmError};

/// mov dx,0x3f8; mov al,'x'; 1: out dx,al; mov ecx,2000; 2: dec ecx; jnz 2b; jmp 1b
const GUEST_CODE: [u8; 18] = [
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xb9, 0xd0, 0x07, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xfc,
    0xeb, 0xf4,
];
const LOAD: u64 = 0x10_0000;

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Waits up to `max` for the file to grow past `from`.
fn grows(p: &Path, from: u64, max: Duration) -> bool {
    let deadline = std::time::Instant::now() + max;
    while std::time::Instant::now() < deadline {
        if size(p) > from {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn pause_stops_guest_code_and_resume_restarts_it() {
    require_kvm();
    let dir = ScratchDir::new("kiln-pause");
    let kernel = dir.write("guest.elf", elf::code_at(LOAD, &GUEST_CODE));
    let serial = dir.join("serial.out");

    for vcpus in [1u8, 2] {
        let _ = std::fs::remove_file(&serial);
        let mut res = VmResources::default();
        res.set_machine_config(MachineConfig {
            vcpu_count: vcpus,
            mem_size_mib: 16,
            ..Default::default()
        })
        .unwrap();
        res.set_boot_source(BootSourceConfig {
            kernel_image_path: kernel.to_str().unwrap().into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
            ..Default::default()
        })
        .unwrap();
        let opts = BuildOptions {
            serial: SerialSink::Path(serial.to_str().unwrap().into()),
            entry: EntryPreference::Linux64,
            trace: None,
            strict_io: false,
            pci: false,
            coalesce_mmio: false,
        };
        let (mut vm, mut events) = build_microvm(&res, opts).expect("build the microVM");
        assert_eq!(vm.state(), VmState::Running);
        assert!(
            grows(&serial, 0, Duration::from_secs(5)),
            "the guest never wrote"
        );

        vm.pause().expect("pause");
        assert_eq!(vm.state(), VmState::Paused);
        assert!(matches!(vm.pause(), Err(VmmError::WrongState(_))));
        let paused_at = size(&serial);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            size(&serial),
            paused_at,
            "guest output while paused ({vcpus} vCPUs)"
        );

        vm.resume().expect("resume");
        assert_eq!(vm.state(), VmState::Running);
        assert!(
            grows(&serial, paused_at, Duration::from_secs(5)),
            "no guest output after resume"
        );

        // Pausing and resuming again works, and Ctrl+Alt+Del reaches the keyboard.
        vm.pause().expect("second pause");
        vm.resume().expect("second resume");
        vm.send_ctrl_alt_del().expect("ctrl+alt+del");

        // The embedding code can end the run loop through the exit notifier.
        vm.exit_notifier().notify(VmExit::Requested {
            code: 0,
            reason: "test done".into(),
        });
        let exit = vm.run(&mut events);
        assert_eq!(
            exit,
            VmExit::Requested {
                code: 0,
                reason: "test done".into()
            }
        );
        drop(vm);
        drop(events);
    }
}
