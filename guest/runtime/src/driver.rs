//! The vsock driver once connected, shared by the invocation loop and the paths that report
//! a panic or a CPU exception: the driver itself, whether the runtime is using it, and the
//! invocation whose handler is running.

use crate::arch::reset;
use crate::global::Global;
use crate::serial::rt_log;
use crate::vsock::Vsock;

/// The driver, once connected.
pub static DRIVER: Global<Option<Vsock>> = Global::new(None);
/// Set while the runtime itself uses the driver: a panic then cannot use it.
pub static DRIVER_BUSY: Global<bool> = Global::new(false);
/// The invocation whose handler is running.
pub static CURRENT_ID: Global<Option<u32>> = Global::new(None);

/// Runs `f` on the driver, marking it busy for the panic path; stops the VM when there is no
/// driver yet.
pub fn with_driver<R>(f: impl FnOnce(&mut Vsock) -> R) -> R {
    // SAFETY: the borrows of DRIVER and DRIVER_BUSY end before this returns, and the
    // function's handler is never called inside `f`.
    unsafe {
        *DRIVER_BUSY.get() = true;
        let Some(d) = DRIVER.get().as_mut() else {
            rt_log!("error vsock driver used before it was set up");
            reset();
        };
        let r = f(d);
        *DRIVER_BUSY.get() = false;
        r
    }
}
