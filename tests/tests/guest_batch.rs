//! The register-batch executor of kiln-guest-virtio (`kiln_perform_regops`, the assembly the
//! function runtime's ring-0 `#GP` handler calls to perform the start-up's LAPIC, IOAPIC and
//! virtio register accesses and the driver's sleeps), run here on ordinary memory standing
//! in for the registers, through the same `Batch` the runtime records into. Boots of the
//! function images (function_runtime.rs, the worker's suites) prove it drives real devices;
//! these prove its contract, including the paths a working device never takes.

use kiln_guest_virtio::batch::{OP_CHECK, OP_READ, OP_WAIT, OP_WRITE};
use kiln_guest_virtio::{Batch, RegOp, Stopped};
use std::cell::UnsafeCell;

core::arch::global_asm!(kiln_guest_virtio::batch_asm!(), options(att_syntax));

extern "C" {
    fn kiln_perform_regops(ops: *mut RegOp, count: usize) -> usize;
}

/// The executor, as the runtime hands it a batch. Only for this file's batches: every
/// address in them is one of a live [`Regs`]' cells, and none reaches an `OP_WAIT`
/// (privileged) without stopping before it.
fn perform(ops: &mut [RegOp]) -> usize {
    // SAFETY: see above; the cells are `UnsafeCell`s, written only through these raw
    // addresses while no reference to their contents exists.
    unsafe { kiln_perform_regops(ops.as_mut_ptr(), ops.len()) }
}

/// Eight 32-bit "registers" in memory, written by the executor through raw addresses.
struct Regs(Box<[UnsafeCell<u32>; 8]>);

impl Regs {
    fn new(values: [u32; 8]) -> Regs {
        Regs(Box::new(values.map(UnsafeCell::new)))
    }

    fn addr(&self, i: usize) -> u64 {
        self.0[i].get() as u64
    }

    fn values(&self) -> [u32; 8] {
        // SAFETY: each cell is read through its own pointer; nothing writes them meanwhile
        // (the executor has returned).
        std::array::from_fn(|i| unsafe { std::ptr::read_volatile(self.0[i].get()) })
    }
}

#[test]
fn writes_reads_and_checks_are_performed_in_order() {
    let regs = Regs::new([0, 0, 0x0b, 0, 0, 0, 0, 0]);
    let mut b = Batch::<8>::new();
    b.write(regs.addr(0), 7);
    let read_back = b.read(regs.addr(0));
    b.write(regs.addr(1), 0xdead_beef);
    let check = b.check(regs.addr(2), 0x08, 0x08);
    b.write(regs.addr(3), 1);
    let status = b.read(regs.addr(2));
    assert_eq!(b.run(perform), Ok(()));
    assert_eq!(regs.values(), [7, 0xdead_beef, 0x0b, 1, 0, 0, 0, 0]);
    // The read after the write saw it; the check and the last read saw register 2.
    assert_eq!(b.value(read_back), Some(7));
    assert_eq!(b.value(check), Some(0x0b));
    assert_eq!(b.value(status), Some(0x0b));
}

#[test]
fn a_failed_check_stops_the_batch_after_itself() {
    // Register 2 reads as a status without FEATURES_OK (0x08): the device refused.
    let regs = Regs::new([0, 0, 0x03, 0, 0, 0, 0, 0]);
    let mut b = Batch::<8>::new();
    b.write(regs.addr(0), 1);
    let features_ok = b.check(regs.addr(2), 0x08, 0x08);
    b.write(regs.addr(1), 2);
    let later = b.read(regs.addr(2));
    assert_eq!(b.run(perform), Err(Stopped::Check(features_ok, 0x03)));
    // What came before was done, nothing after.
    assert_eq!(regs.values(), [1, 0, 0x03, 0, 0, 0, 0, 0]);
    assert_eq!(b.value(features_ok), Some(0x03));
    assert_eq!(b.value(later), None);
}

#[test]
fn a_check_compares_only_the_masked_bits() {
    // DRIVER_OK (0x04) set and NEEDS_RESET (0x40) clear passes whatever the other bits are;
    // NEEDS_RESET set fails.
    for (status, passes) in [(0x0f, true), (0x04, true), (0x4f, false), (0x0b, false)] {
        let regs = Regs::new([status, 0, 0, 0, 0, 0, 0, 0]);
        let mut b = Batch::<4>::new();
        let ok = b.check(regs.addr(0), 0x44, 0x04);
        b.write(regs.addr(1), 9);
        let r = b.run(perform);
        if passes {
            assert_eq!(r, Ok(()), "status {status:#x}");
            assert_eq!(regs.values()[1], 9);
        } else {
            assert_eq!(r, Err(Stopped::Check(ok, status)), "status {status:#x}");
            assert_eq!(regs.values()[1], 0);
        }
    }
}

#[test]
fn an_unknown_operation_stops_the_batch_before_itself() {
    let regs = Regs::new([0; 8]);
    let op = |addr, kind, value| RegOp {
        addr,
        kind,
        value,
        mask: 0,
        expect: 0,
    };
    let mut ops = [
        op(regs.addr(0), OP_WRITE, 5),
        op(regs.addr(1), 9, 6),
        op(regs.addr(2), OP_WRITE, 7),
        // Never reached: a privileged wait would fault here.
        op(0, OP_WAIT, 0),
    ];
    assert_eq!(perform(&mut ops), 1);
    assert_eq!(regs.values(), [5, 0, 0, 0, 0, 0, 0, 0]);
    // An empty batch performs nothing.
    assert_eq!(perform(&mut []), 0);
    // The kinds the executor knows are the batch's constants.
    assert_eq!((OP_WRITE, OP_READ, OP_CHECK, OP_WAIT), (0, 1, 2, 3));
}

#[test]
fn a_batch_over_its_capacity_performs_nothing() {
    let regs = Regs::new([0; 8]);
    let mut b = Batch::<2>::new();
    for i in 0..3 {
        b.write(regs.addr(i), 1);
    }
    let mut called = false;
    let r = b.run(|ops| {
        called = true;
        perform(ops)
    });
    assert_eq!(r, Err(Stopped::Overflow));
    assert!(!called);
    assert_eq!(regs.values(), [0; 8]);
}

#[test]
fn an_executor_that_stops_short_without_a_failed_check_is_reported() {
    let regs = Regs::new([0; 8]);
    let mut b = Batch::<4>::new();
    b.write(regs.addr(0), 1);
    b.write(regs.addr(1), 2);
    let r = b.run(|ops| perform(&mut ops[..1]));
    assert_eq!(r, Err(Stopped::Short(1)));
    assert_eq!(regs.values(), [1, 0, 0, 0, 0, 0, 0, 0]);
}
