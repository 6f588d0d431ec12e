//! Locks that survive a panic: the crate's one poison-tolerant way to take a `Mutex` or an
//! `RwLock`.
//!
//! A thread that panics while holding a lock poisons it. In the VMM a panic stops the
//! microVM anyway (a vCPU thread's panic is reported as [`crate::exit::VmExit::VcpuPanic`]),
//! but the state behind the lock must stay usable for teardown, metrics and logs, so a
//! poisoned lock is taken as if it were not.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockWriteGuard};

/// Locks `m`, recovering it if a thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `l` for writing, recovering it if a thread panicked while holding it.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(1));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = l2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *write(&l)), (2, 2));
    }
}
