//! The virtqueue mechanics every device uses (`vmm/src/devices/virtio/queue.rs`): popping
//! heads off a hostile available ring (`pop_head`), walking their descriptor chains with
//! Kiln's limits (`walk_chain`), the readable/writable streams over a chain (`segments`,
//! `read_stream`, `write_stream`), used entries (`add_used`, `add_used_batch`), and the
//! virtio-blk request parser on every chain that walks (`block::request::parse`,
//! `Request::check_range`).
//!
//! Input: see `kiln_fuzz::guest` (queue size, indices, where the three rings are, available
//! ring, descriptor table, data); the last 16 bytes also give the stream offset and length
//! tried on every chain, and a disk capacity for the range checks.
//!
//! Besides "no panic", it checks what the module documentation promises: a head is inside
//! the queue, no more heads are taken in one pass than the queue size, a chain has at most
//! the queue size of buffers, every buffer is inside guest memory, the total is at most
//! 4 GiB, and the streams see exactly the bytes the buffers hold.
#![no_main]

use kiln_fuzz::guest::GuestQueue;
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryBackend;
use vmm::devices::virtio::block::request;
use vmm::devices::virtio::queue::{
    add_used, add_used_batch, has_available, pop_head, read_stream, segments, total_len, unpop,
    walk_chain, write_stream, Buffer, Chain,
};

/// Checks the promises of a chain `walk_chain` accepted.
fn check_chain(g: &GuestQueue, chain: &Chain, size: u16) {
    let n = chain.readable.len() + chain.writable.len();
    assert!(
        n >= 1 && n <= usize::from(size),
        "{n} buffers in a queue of {size}"
    );
    let total = total_len(&chain.readable) + total_len(&chain.writable);
    assert!(total <= u64::from(u32::MAX), "chain of {total} bytes");
    for b in chain.readable.iter().chain(&chain.writable) {
        let len = usize::try_from(b.len).expect("u32 fits usize");
        assert!(
            g.mem.check_range(b.addr, len),
            "buffer {:#x}+{:#x} outside guest memory",
            b.addr.0,
            b.len
        );
    }
}

/// The stream over `buffers` from `offset`, `len` bytes long: its pieces add up to what the
/// buffers hold there, and `read_stream` copies exactly that many bytes.
fn check_stream(g: &GuestQueue, buffers: &[Buffer], offset: u64, len: usize) {
    let total = total_len(buffers);
    let expect = total.saturating_sub(offset).min(len as u64);
    let mut sum = 0u64;
    for (addr, n) in segments(buffers, offset, len as u64) {
        assert!(n > 0, "an empty segment");
        assert!(
            g.mem.check_range(addr, n),
            "segment {:#x}+{n:#x} outside memory",
            addr.0
        );
        sum += n as u64;
    }
    assert_eq!(sum, expect, "segments of {offset}+{len} over {total} bytes");
    let mut buf = vec![0u8; len];
    let got = read_stream(&g.mem, buffers, offset, &mut buf);
    assert_eq!(
        got as u64, expect,
        "read_stream of {offset}+{len} over {total} bytes"
    );
}

/// `write_stream` over `buffers` from `offset` stores exactly as many bytes as they hold
/// there (at most `len`).
fn check_write(g: &GuestQueue, buffers: &[Buffer], offset: u64, len: usize) {
    let expect = total_len(buffers).saturating_sub(offset).min(len as u64);
    let data = vec![0xa5u8; len];
    let put = write_stream(&g.mem, buffers, offset, &data);
    assert_eq!(put as u64, expect, "write_stream of {offset}+{len}");
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let Some(mut g) = GuestQueue::from_input(&mut input) else {
        return;
    };
    let size = g.queue.size();
    // The stream offset and length come from the input's last 8 bytes (which are also the
    // end of the data area).
    let mut knobs = Input::new(
        data.get(data.len().saturating_sub(16)..)
            .unwrap_or_default(),
    );
    let offset = u64::from(knobs.u16());
    let len = usize::from(knobs.u16() % 4096);
    let _ = knobs.u32();
    let capacity = knobs.u64();

    let mut taken: u32 = 0;
    let mut used: Vec<(u16, u32)> = Vec::new();
    // More turns than the ring can hold: pop_head must stop on its own.
    for _ in 0..2 * u32::from(size) + 2 {
        let more = has_available(&g.queue, &g.mem);
        let head = match pop_head(&mut g.queue, &g.mem) {
            Ok(Some(h)) => h,
            Ok(None) => {
                assert!(!more, "has_available said yes, pop_head found nothing");
                break;
            }
            // The driver broke the queue: the device stops using it.
            Err(_) => break,
        };
        assert!(head < size, "head {head} outside a queue of {size}");
        taken += 1;
        assert!(
            taken <= u32::from(size),
            "{taken} heads from a queue of {size} in one pass"
        );
        let walked = walk_chain(&g.queue, &g.mem, head);
        kiln_fuzz::debug(|| format!("head {head}: {walked:?}"));
        let len_used = match walked {
            Ok(chain) => {
                assert_eq!(chain.head, head);
                check_chain(&g, &chain, size);
                check_stream(&g, &chain.readable, offset, len);
                check_stream(&g, &chain.writable, offset, len);
                check_stream(&g, &chain.readable, 0, 16);
                check_write(&g, &chain.writable, offset, len);
                if let Ok(req) = request::parse(&g.mem, &chain) {
                    let writable = total_len(&chain.writable);
                    assert_eq!(req.status_offset + 1, writable);
                    assert!(req.data_len <= writable.max(total_len(&chain.readable)));
                    // The largest real disk is a file of 2^63 bytes: 2^54 sectors.
                    for capacity in [0, 1, 8, 1 << 54, u64::MAX, capacity] {
                        if let Ok(at) = req.check_range(capacity, 1 << 24) {
                            let end = at.checked_add(req.data_len).expect("range end overflows");
                            assert!(end <= capacity.saturating_mul(512), "past the disk's end");
                            assert_eq!(req.data_len % 512, 0);
                        }
                    }
                }
                u32::try_from(total_len(&chain.writable)).unwrap_or(u32::MAX)
            }
            Err(_) => 0,
        };
        used.push((head, len_used));
    }
    // Half the used entries one at a time, the rest in one batch (as merged receive buffers
    // publish them).
    let half = used.len() / 2;
    for &(head, len) in &used[..half] {
        if add_used(&mut g.queue, &g.mem, head, len).is_err() {
            return;
        }
    }
    if add_used_batch(&mut g.queue, &g.mem, &used[half..]).is_ok() {
        let published = g.used_idx().wrapping_sub(g.start);
        assert_eq!(
            usize::from(published),
            used.len(),
            "used idx moved by the wrong count"
        );
    }
    // A device that could not use its last heads puts them back.
    unpop(&mut g.queue, u16::try_from(taken.min(2)).unwrap_or(0));
    let _ = pop_head(&mut g.queue, &g.mem);
});
