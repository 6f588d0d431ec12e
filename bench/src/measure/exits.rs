//! Rows 10 (`--only exits`): what one guest MMIO access costs on this host, measured with a
//! minimal VM of this process's own (no VMM, no device model): a loop of 64-bit guest code
//! that writes one register `ACCESSES` times, at CPL 3 and at CPL 0, to an address no memory
//! slot covers (each access an exit to this process's `KVM_RUN` loop, as a virtio register
//! the VMM serves) and to the IOAPIC of KVM's in-kernel irqchip (served inside KVM, as the
//! LAPIC, the IOAPIC, coalesced writes and ioeventfd notifications are). The same loop
//! without the access is subtracted. A host property, not Kiln's: it explains why guest
//! start-up costs differ between hosts, and why the function runtime performs its start-up
//! accesses in ring 0 (guest/runtime/README.md) — on `kvm_pvm` hosts ring 0 is emulated and
//! an access from there never leaves KVM's emulator.

use crate::opts::Opts;
use crate::table::Table;
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::time::Instant;

/// Guest RAM: code, stack and page tables.
const RAM: usize = 4 << 20;
/// Writes per measured loop.
const ACCESSES: u32 = 2000;
/// Not backed by any memory slot: every access exits to `KVM_RUN`'s caller.
const UNBACKED: u64 = 0x1000_0000;
/// The in-kernel IOAPIC's register select (a write is served inside KVM).
const IOAPIC: u64 = 0xfec0_0000;
/// Written once at the end of the loop: the measurement is over.
const DONE: u64 = 0x1000_1000;
const CODE: u64 = 0x10000;
const PML4: u64 = 0x1000;

#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// No access in the loop (the baseline).
    None,
    Unbacked,
    Ioapic,
}

pub fn bench_exits(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 10. one guest MMIO access: to the VMM and inside KVM, from ring 3 and ring 0");
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let runs = opts.runs.clamp(3, 20);
    for (ring, label) in [(3u16, "ring 3 (native)"), (0, "ring 0")] {
        let mut to_vmm = vec![];
        let mut in_kvm = vec![];
        for _ in 0..runs {
            let base = per_access_us(&kvm, ring, Target::None)?;
            to_vmm.push(per_access_us(&kvm, ring, Target::Unbacked)? - base);
            in_kvm.push(per_access_us(&kvm, ring, Target::Ioapic)? - base);
        }
        t.add_note(
            &format!("10 host: guest MMIO write from {label}, served by the VMM"),
            "µs",
            &to_vmm,
            None,
            "a minimal VM of the bench's own (no VMM): exit to KVM_RUN's caller and back, the loop's own cost subtracted",
        );
        t.add_note(
            &format!("10 host: guest MMIO write from {label}, served inside KVM"),
            "µs",
            &in_kvm,
            None,
            "the same to the in-kernel IOAPIC: as LAPIC, IOAPIC, coalesced writes and ioeventfd notifications",
        );
    }
    Ok(())
}

/// Guest RAM, page-aligned, freed on drop.
struct Ram(*mut u8);

impl Ram {
    fn new() -> Result<Ram, String> {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout()) };
        if p.is_null() {
            return Err("no memory for the guest".into());
        }
        Ok(Ram(p))
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        let at = usize::try_from(at).expect("guest addresses are small");
        assert!(at + bytes.len() <= RAM);
        // SAFETY: inside the allocation (checked above); no reference to it exists.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0.add(at), bytes.len()) };
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout; the VM using it is gone (it is
        // dropped before the Ram, see `per_access_us`).
        unsafe { dealloc(self.0, layout()) }
    }
}

fn layout() -> Layout {
    Layout::from_size_align(RAM, 4096).expect("a valid layout")
}

/// Microseconds per loop iteration of one measured run.
fn per_access_us(kvm: &Kvm, ring: u16, target: Target) -> Result<f64, String> {
    let e = |what: &'static str| move |err: kvm_ioctls::Error| format!("{what}: {err}");
    let ram = Ram::new()?;
    let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM as u64,
        userspace_addr: ram.0 as u64,
    };
    // SAFETY: the region is `ram`'s allocation, which outlives the VM (declared first,
    // dropped last).
    unsafe { vm.set_user_memory_region(region) }.map_err(e("memory slot"))?;
    if target == Target::Ioapic {
        vm.create_irq_chip().map_err(e("KVM_CREATE_IRQCHIP"))?;
    }
    let mut vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(e("KVM_GET_SUPPORTED_CPUID"))?;
    vcpu.set_cpuid2(&cpuid).map_err(e("KVM_SET_CPUID2"))?;
    write_guest(&ram, target);
    let address = if target == Target::Ioapic {
        IOAPIC
    } else {
        UNBACKED
    };
    set_long_mode(&vcpu, ring, address).map_err(e("registers"))?;
    let started = Instant::now();
    loop {
        match vcpu.run().map_err(e("KVM_RUN"))? {
            VcpuExit::MmioWrite(DONE, _) => break,
            VcpuExit::MmioWrite(..) => {}
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(ACCESSES))
}

/// Identity-mapped page tables (2 MiB pages, user-accessible: the first GiB and the 4th,
/// where the IOAPIC lies) and the loop.
fn write_guest(ram: &Ram, target: Target) {
    let table = |at: u64, entries: &[u64]| {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        ram.write(at, &bytes);
    };
    // Present, writable, user; PS for the 2 MiB leaves.
    let (link, leaf) = (0x7u64, 0x87u64);
    table(PML4, &[0x2000 | link]);
    table(0x2000, &[0x3000 | link, 0, 0, 0x4000 | link]);
    let low: Vec<u64> = (0..512u64).map(|i| (i << 21) | leaf).collect();
    let high: Vec<u64> = (0..512u64)
        .map(|i| (0xc000_0000 + (i << 21)) | leaf)
        .collect();
    table(0x3000, &low);
    table(0x4000, &high);
    let mut code = vec![0xb9]; // mov ecx, ACCESSES
    code.extend_from_slice(&ACCESSES.to_le_bytes());
    code.extend_from_slice(match target {
        Target::None => &[0x90, 0x90], // nop; nop
        _ => &[0x89, 0x03],            // mov [rbx], eax
    });
    code.extend_from_slice(&[
        0xff, 0xc9, // dec ecx
        0x75, 0xfa, // jnz back to the access
        0x89, 0x02, // mov [rdx], eax (DONE)
        0xeb, 0xfe, // jmp .
    ]);
    ram.write(CODE, &code);
}

/// 64-bit mode at CPL `ring` with RBX = `target`, RDX = [`DONE`].
fn set_long_mode(vcpu: &VcpuFd, ring: u16, target: u64) -> Result<(), kvm_ioctls::Error> {
    let mut s = vcpu.get_sregs()?;
    s.cr3 = PML4;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0011; // PG, ET, PE
    s.efer = 0x500; // LME, LMA
    let dpl = u8::try_from(ring).expect("ring 0 or 3");
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08 | ring,
        type_: 11,
        present: 1,
        dpl,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10 | ring,
        type_: 3,
        db: 1,
        l: 0,
        ..code
    };
    s.cs = code;
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    vcpu.set_sregs(&s)?;
    let mut r = vcpu.get_regs()?;
    r.rip = CODE;
    r.rflags = 2;
    r.rsp = 0x20_0000;
    r.rbx = target;
    r.rdx = DONE;
    vcpu.set_regs(&r)?;
    Ok(())
}
