//! The global allocator: the heap is the RAM from [`crate::layout::HEAP_START`] to the end
//! of its region in the boot memory map.
//!
//! One VM serves one function, one invocation at a time, so it can be simple; but a warm VM
//! serves many invocations, so freed memory must be reused:
//!
//! * **Small** blocks (up to 4 KiB) come in power-of-two size classes from 16 bytes, each
//!   aligned to its size, carved upwards from the bottom of the heap; a freed block goes on
//!   its class's free list (LIFO, O(1)).
//! * **Large** blocks (whole 4 KiB pages) are carved downwards from the top of the heap;
//!   freed ones go on an address-ordered free list, merged with free neighbours, and the
//!   block at the low end of the large area is given back to it. First fit.
//!
//! The two areas meet in the middle; an allocation that fits in neither fails (null), which
//! the runtime reports as `OutOfMemory` for events or a panic elsewhere. Only the vCPU that
//! runs the runtime allocates and nothing allocates in interrupt context, so there is no
//! locking.

// Size classes are below 9 and shifts below 13: the casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

const MIN_SHIFT: u32 = 4;
const PAGE: usize = 4096;
const CLASSES: usize = 9; // 16, 32, ..., 4096

struct FreeSmall {
    next: *mut FreeSmall,
}

struct FreeLarge {
    size: usize,
    next: *mut FreeLarge,
}

struct Heap {
    /// Next free byte of the small area (grows up).
    small_top: usize,
    /// Lowest byte of the large area (grows down); `small_top <= large_bottom`.
    large_bottom: usize,
    small_free: [*mut FreeSmall; CLASSES],
    /// Free large blocks above `large_bottom`, in address order.
    large_free: *mut FreeLarge,
    start: usize,
    end: usize,
    in_use: usize,
}

/// The allocator registered with `#[global_allocator]` in lib.rs.
pub struct KilnHeap(UnsafeCell<Heap>);

// SAFETY: the runtime runs on one vCPU and never allocates in interrupt context (the
// interrupt handlers are a few instructions of assembly), so the heap is never reached from
// two places at once.
unsafe impl Sync for KilnHeap {}

impl KilnHeap {
    pub const fn new() -> Self {
        KilnHeap(UnsafeCell::new(Heap {
            small_top: 0,
            large_bottom: 0,
            small_free: [null_mut(); CLASSES],
            large_free: null_mut(),
            start: 0,
            end: 0,
            in_use: 0,
        }))
    }

    /// Hands `[start, end)` to the allocator. Called once, before the first allocation.
    ///
    /// # Safety
    /// The range is RAM that nothing else uses, identity-mapped and writable.
    pub unsafe fn init(&self, start: usize, end: usize) {
        // SAFETY: no allocation is in progress (single vCPU, called at start-up).
        let h = unsafe { &mut *self.0.get() };
        let start = start.next_multiple_of(PAGE);
        let end = end & !(PAGE - 1);
        h.start = start;
        h.end = end.max(start);
        h.small_top = h.start;
        h.large_bottom = h.end;
    }

    /// (bytes in use, bytes in the heap).
    pub fn usage(&self) -> (usize, usize) {
        // SAFETY: a read of two counters; no allocation is in progress (single vCPU).
        let h = unsafe { &*self.0.get() };
        (h.in_use, h.end - h.start)
    }
}

/// The size class of a small request, or `None` when it needs the large area.
fn class_of(layout: &Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if need > PAGE {
        return None;
    }
    let shift = need.next_power_of_two().trailing_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

impl Heap {
    fn alloc_small(&mut self, class: usize) -> *mut u8 {
        let head = self.small_free[class];
        if !head.is_null() {
            // SAFETY: blocks on the free list are ours, unused, and hold a `FreeSmall`.
            self.small_free[class] = unsafe { (*head).next };
            return head.cast();
        }
        let size = 1usize << (class as u32 + MIN_SHIFT);
        let at = self.small_top.next_multiple_of(size);
        match at.checked_add(size) {
            Some(end) if end <= self.large_bottom => {
                self.small_top = end;
                at as *mut u8
            }
            _ => null_mut(),
        }
    }

    fn alloc_large(&mut self, size: usize) -> *mut u8 {
        // First fit in the free list; the tail of a larger block stays free.
        let mut link: *mut *mut FreeLarge = &mut self.large_free;
        // SAFETY: `link` points at the list head or at a `next` field of a free block; every
        // block on the list is ours, unused, page aligned and holds a `FreeLarge`.
        unsafe {
            while !(*link).is_null() {
                let block = *link;
                let bsize = (*block).size;
                if bsize >= size {
                    if bsize == size {
                        *link = (*block).next;
                    } else {
                        let rest = block.cast::<u8>().add(size).cast::<FreeLarge>();
                        rest.write(FreeLarge {
                            size: bsize - size,
                            next: (*block).next,
                        });
                        *link = rest;
                    }
                    return block.cast();
                }
                link = &mut (*block).next;
            }
        }
        match self.large_bottom.checked_sub(size) {
            Some(at) if at >= self.small_top => {
                self.large_bottom = at;
                at as *mut u8
            }
            _ => null_mut(),
        }
    }

    /// Puts a large block back: merged into the address-ordered list, and the list's lowest
    /// blocks given back to the large area's edge.
    ///
    /// # Safety
    /// `ptr` was returned by `alloc_large(size)` and is no longer used.
    unsafe fn free_large(&mut self, ptr: *mut u8, size: usize) {
        let addr = ptr as usize;
        if addr == self.large_bottom {
            self.large_bottom += size;
        } else {
            let mut prev: *mut FreeLarge = null_mut();
            let mut next = self.large_free;
            // SAFETY: list blocks are ours (see alloc_large); `ptr` is ours, unused, page
            // aligned and at least one page long.
            unsafe {
                while !next.is_null() && (next as usize) < addr {
                    prev = next;
                    next = (*next).next;
                }
                let node = ptr.cast::<FreeLarge>();
                node.write(FreeLarge { size, next });
                // Merge with the following block.
                if !next.is_null() && addr + size == next as usize {
                    (*node).size += (*next).size;
                    (*node).next = (*next).next;
                }
                // Merge with the preceding block, or link after it.
                if prev.is_null() {
                    self.large_free = node;
                } else if prev as usize + (*prev).size == addr {
                    (*prev).size += (*node).size;
                    (*prev).next = (*node).next;
                } else {
                    (*prev).next = node;
                }
            }
        }
        // Give free blocks at the edge back to the large area.
        // SAFETY: as above.
        unsafe {
            while !self.large_free.is_null() && self.large_free as usize == self.large_bottom {
                let head = self.large_free;
                self.large_bottom += (*head).size;
                self.large_free = (*head).next;
            }
        }
    }
}

// SAFETY: blocks handed out never overlap (the small and large areas are disjoint, each block
// leaves its free list or area when handed out), are aligned as asked (small blocks to their
// power-of-two size >= align, large blocks to pages; larger alignments are refused), and are
// valid memory of the heap range given to `init`.
unsafe impl GlobalAlloc for KilnHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single vCPU, no allocation in interrupt context: no other reference exists.
        let h = unsafe { &mut *self.0.get() };
        let (ptr, size) = match class_of(&layout) {
            Some(class) => (h.alloc_small(class), 1usize << (class as u32 + MIN_SHIFT)),
            None if layout.align() <= PAGE => {
                let Some(size) = layout.size().checked_next_multiple_of(PAGE) else {
                    return null_mut();
                };
                (h.alloc_large(size), size)
            }
            None => return null_mut(),
        };
        if !ptr.is_null() {
            h.in_use += size;
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        let h = unsafe { &mut *self.0.get() };
        match class_of(&layout) {
            Some(class) => {
                let node = ptr.cast::<FreeSmall>();
                // SAFETY: the caller returns a block `alloc` gave for this layout (so of this
                // class, at least 16 bytes, aligned): it can hold a `FreeSmall`.
                unsafe {
                    node.write(FreeSmall {
                        next: h.small_free[class],
                    })
                };
                h.small_free[class] = node;
                h.in_use -= 1usize << (class as u32 + MIN_SHIFT);
            }
            None => {
                let size = layout.size().next_multiple_of(PAGE);
                // SAFETY: the block came from `alloc_large(size)` for this layout.
                unsafe { h.free_large(ptr, size) };
                h.in_use -= size;
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Same block when the new size needs the same class or the same number of pages.
        if let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) {
            let same = match (class_of(&layout), class_of(&new_layout)) {
                (Some(a), Some(b)) => a == b,
                (None, None) => layout.size().div_ceil(PAGE) == new_size.div_ceil(PAGE),
                _ => false,
            };
            if same {
                return ptr;
            }
            // SAFETY: the GlobalAlloc contract, forwarded.
            let new = unsafe { self.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both blocks are valid for the smaller of the two sizes and distinct.
                unsafe {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
            }
            return new;
        }
        null_mut()
    }
}
