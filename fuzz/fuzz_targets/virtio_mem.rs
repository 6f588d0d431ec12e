//! The virtio-mem device (`vmm/src/devices/virtio/mem/`): its request decoding and range
//! checks, its blocks and slots, and the device behind the virtio-mmio transport as a guest
//! drives it (`kiln_fuzz::machine` and `kiln_fuzz::driver`), with the host changing
//! `requested_size` in between.
//!
//! The hot-plug region is 1 MiB at 4 GiB in a memory of its own (64 KiB blocks, 256 KiB
//! slots), so that PLUG and UNPLUG give pages back with `madvise` on the target's own
//! mapping; its slots are registered with a stand-in that checks every change.
//!
//! Input (structured, `arbitrary`): the driver's initialisation, then operations: the
//! guest's (chains, pokes, register accesses, resets), the host's (`PATCH` of
//! `requested_size`), and requests decided directly (a request's 24 bytes, raw or built
//! from a type, a block offset, a count and an unaligned offset).
//!
//! Checks, besides the machine's: a model of the blocks (a request's effect, as the spec
//! says, on a plain bit list) agrees with every answer and with `plugged_size`; the
//! plugged size never passes `requested_size` through a PLUG; a slot is registered exactly
//! while a block in it is plugged; decoding a request and encoding it again gives the same
//! type, address and count.
#![no_main]

use arbitrary::Arbitrary;
use kiln_fuzz::driver::{Driver, Op, QueueLayout};
use kiln_fuzz::machine::Machine;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::mem::region::MemorySlots;
use vmm::devices::virtio::mem::request::{BlockRange, BlockState, Request, Response};
use vmm::devices::virtio::mem::VirtioMem;

const ADDR: u64 = 1 << 32;
const BLOCK: u64 = 64 << 10;
const SLOT: u64 = 256 << 10;
const SIZE: u64 = 1 << 20;
const BLOCKS: usize = (SIZE / BLOCK) as usize;
const SLOTS: usize = (SIZE / SLOT) as usize;

/// The stand-in KVM: which slots are registered.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<[bool; SLOTS]>>);

impl MemorySlots for Slots {
    unsafe fn set_slot(&self, slot: u32, guest: u64, size: u64, _host: u64) -> Result<(), String> {
        let i = (slot - 32) as usize;
        assert!(i < SLOTS, "slot {slot} past the region's");
        assert_eq!(
            guest,
            ADDR + i as u64 * SLOT,
            "slot {slot} at the wrong address"
        );
        let mut s = self.0.lock().unwrap();
        assert!(
            s[i] != (size != 0),
            "slot {slot} set twice to the same state"
        );
        assert!(size == 0 || size == SLOT);
        s[i] = size != 0;
        Ok(())
    }
}

#[derive(Debug, Arbitrary)]
enum Step {
    Guest(Op),
    /// `PATCH /hotplug/memory` with `requested_size_mib`... in blocks here: the device's
    /// unit is MiB, so the target asks in MiB of a region of 1 MiB: 0 or 1.
    Host(u8),
    /// A request decided directly.
    Direct {
        kind: u8,
        block: u8,
        nb_blocks: u16,
        offset: u16,
        raw: Option<[u8; 24]>,
    },
}

#[derive(Debug, Arbitrary)]
struct Case {
    accept: u64,
    queue: QueueLayout,
    steps: Vec<Step>,
}

fuzz_target!(|case: Case| {
    kiln_fuzz::setup();
    let region_mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(ADDR), SIZE as usize)])
        .expect("the region's memory");
    let mut dev = VirtioMem::new(&region_mem, ADDR, SIZE, BLOCK, SLOT).expect("the device");
    let slots = Slots::default();
    dev.region_mut().set_slots(Box::new(slots.clone()), 32);
    let (mut m, spy) = Machine::new(dev);
    let mut driver = Driver::default();
    driver.init(&mut m, case.accept, false, &[case.queue]);
    let mut model = [false; BLOCKS];
    for step in case
        .steps
        .iter()
        .chain([&Step::Guest(Op::Run { waits: 3 })])
    {
        match step {
            Step::Guest(op) => {
                driver.apply(&mut m, op);
                // Requests from the queue change blocks the model does not see: take the
                // device's word for them, then check its consistency below.
                let spy = spy.lock().unwrap();
                for (b, bit) in model.iter_mut().enumerate() {
                    *bit = spy.inner.region().state(b as u64, 1) == BlockState::Plugged;
                }
            }
            Step::Host(mib) => {
                let mut spy = spy.lock().unwrap();
                let _ = spy.inner.update_requested_size(u32::from(*mib % 3));
            }
            Step::Direct {
                kind,
                block,
                nb_blocks,
                offset,
                raw,
            } => {
                let bytes = raw.unwrap_or_else(|| {
                    let mut b = [0u8; 24];
                    b[..2].copy_from_slice(&u16::from(*kind % 5).to_le_bytes());
                    let addr = (ADDR + u64::from(*block % 20) * BLOCK)
                        .wrapping_sub(2 * BLOCK)
                        .wrapping_add(u64::from(*offset % 3) * 4096);
                    b[8..16].copy_from_slice(&addr.to_le_bytes());
                    b[16..18].copy_from_slice(&(nb_blocks % 24).to_le_bytes());
                    b
                });
                let Ok(req) = Request::decode(&bytes) else {
                    continue;
                };
                let again = Request::decode(&req.encode()).expect("an encoded request decodes");
                assert_eq!(again, req);
                let mut spy = spy.lock().unwrap();
                let status = spy.inner.status();
                let usable = spy.inner.usable_size();
                let before = spy.inner.region().plugged_bytes();
                let answer = spy.inner.handle(req);
                check(
                    &mut model,
                    req,
                    answer,
                    usable,
                    before,
                    status.requested_size_mib << 20,
                );
            }
        }
        let spy = spy.lock().unwrap();
        let plugged = model.iter().filter(|&&b| b).count() as u64 * BLOCK;
        assert_eq!(spy.inner.region().plugged_bytes(), plugged);
        let registered = *slots.0.lock().unwrap();
        for (s, reg) in registered.iter().enumerate() {
            let per = (SLOT / BLOCK) as usize;
            let any = model[s * per..(s + 1) * per].iter().any(|&b| b);
            assert_eq!(
                *reg, any,
                "slot {s} registered {reg} with blocks plugged {any}"
            );
            assert_eq!(spy.inner.region().slot_registered(s), *reg);
        }
    }
});

/// The spec's effect of `req` on `model`, checked against the device's `answer`.
fn check(
    model: &mut [bool; BLOCKS],
    req: Request,
    answer: Response,
    usable: u64,
    plugged_before: u64,
    requested: u64,
) {
    let blocks = |r: BlockRange| -> Option<std::ops::Range<usize>> {
        let off = r.addr.checked_sub(ADDR)?;
        let len = u64::from(r.nb_blocks) * BLOCK;
        (r.nb_blocks > 0 && r.addr.is_multiple_of(BLOCK) && off + len <= usable)
            .then(|| (off / BLOCK) as usize..((off + len) / BLOCK) as usize)
    };
    match req {
        Request::Plug(r) => match blocks(r) {
            None => assert_eq!(answer, Response::Error, "{r:?}"),
            Some(range) => {
                if model[range.clone()].iter().any(|&b| b) {
                    assert_eq!(answer, Response::Error);
                } else if plugged_before + range.len() as u64 * BLOCK > requested {
                    assert_eq!(answer, Response::Nack);
                } else {
                    assert_eq!(answer, Response::Ack);
                    model[range].fill(true);
                }
            }
        },
        Request::Unplug(r) => match blocks(r) {
            Some(range) if model[range.clone()].iter().all(|&b| b) => {
                assert_eq!(answer, Response::Ack);
                model[range].fill(false);
            }
            _ => assert_eq!(answer, Response::Error),
        },
        Request::UnplugAll => {
            assert_eq!(answer, Response::Ack);
            model.fill(false);
        }
        Request::State(r) => match blocks(r) {
            None => assert_eq!(answer, Response::Error),
            Some(range) => {
                let n = model[range.clone()].iter().filter(|&&b| b).count();
                let want = if n == 0 {
                    BlockState::Unplugged
                } else if n == range.len() {
                    BlockState::Plugged
                } else {
                    BlockState::Mixed
                };
                assert_eq!(answer, Response::State(want));
            }
        },
    }
}
