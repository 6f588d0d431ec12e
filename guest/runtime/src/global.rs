//! Mutable statics for a single-vCPU runtime with no Rust code in interrupt context.

use core::cell::UnsafeCell;

/// A value shared by the runtime's loop and its panic and fault paths.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: the runtime runs on one vCPU, interrupts are masked whenever Rust code runs (the
// handlers are a few instructions of assembly), and callers of `get` keep their borrows short
// and never across a call into the function's handler.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(value: T) -> Self {
        Global(UnsafeCell::new(value))
    }

    /// The value.
    ///
    /// # Safety
    /// No other reference to the value is alive while the returned one is used.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        // SAFETY: exclusivity is the caller's obligation.
        unsafe { &mut *self.0.get() }
    }
}
