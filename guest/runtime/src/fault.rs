//! Reporting what ends the VM: a panic of the function (or of the runtime) and a CPU
//! exception at CPL 3. Either becomes an Error frame for the invocation that was running
//! (`ErrorCode::Panic`, or `OutOfMemory` for a failed allocation; id 0 outside an invocation)
//! and a `KILN-RT: panic ...` line on the serial console; the runtime then waits until the
//! device has taken the frame and stops the VM (i8042 reset). A panic or exception while
//! that happens, or inside the vsock driver, stops the VM at once.

use crate::arch::reset;
use crate::driver::{CURRENT_ID, DRIVER, DRIVER_BUSY};
use crate::fixed::FixedBuf;
use crate::global::Global;
use crate::layout::STACK_GUARD;
use crate::serial::{Serial, RUNTIME_PREFIX};
use core::fmt::Write;
use kiln_protocol::{error_code_bytes, ErrorCode, Header, Kind};

static REPORTING: Global<bool> = Global::new(false);

/// Sends `message` as an Error frame with `code` if the driver can be used, prints it, and
/// stops the VM.
fn report_fatal(code: ErrorCode, message: &[u8]) -> ! {
    Serial::raw(RUNTIME_PREFIX.as_bytes());
    Serial::raw(b"panic ");
    Serial::escaped(message);
    Serial::raw(b"\n");
    // SAFETY: the runtime's loop is suspended (we are in a panic or fault path on the same
    // vCPU) and does not hold a borrow of these statics unless DRIVER_BUSY says so.
    unsafe {
        if *REPORTING.get() || *DRIVER_BUSY.get() {
            reset();
        }
        *REPORTING.get() = true;
        if let Some(d) = DRIVER.get().as_mut() {
            let id = CURRENT_ID.get().unwrap_or(0);
            let code = error_code_bytes(code);
            let len = u32::try_from(code.len() + message.len()).unwrap_or(0);
            let header = Header::new(Kind::Error, id, len);
            if d.write_all(&[&header.encode(), &code, message]).is_ok() {
                d.flush(1);
            }
        }
    }
    reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut msg = FixedBuf::<1024>::new();
    let text = info.message();
    let _ = match info.location() {
        Some(at) => write!(
            msg,
            "panicked at {}:{}:{}: {text}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => write!(msg, "panicked: {text}"),
    };
    // The allocation-failure handler of `alloc` panics with this text.
    let oom = text
        .as_str()
        .is_some_and(|t| t.starts_with("memory allocation of"))
        || {
            let mut probe = FixedBuf::<32>::new();
            let _ = write!(probe, "{text}");
            probe.as_bytes().starts_with(b"memory allocation of")
        };
    let code = if oom {
        ErrorCode::OutOfMemory
    } else {
        ErrorCode::Panic
    };
    report_fatal(code, msg.as_bytes())
}

fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD error",
        _ => "exception",
    }
}

/// Entered at CPL 3 on the fault stack by the ring-0 exception path (entry.rs).
#[no_mangle]
pub extern "C" fn kiln_user_fault(vector: u64, error: u64, rip: u64, addr: u64) -> ! {
    let mut msg = FixedBuf::<256>::new();
    let _ = write!(
        msg,
        "CPU exception {vector} ({}) at rip={rip:#x}",
        exception_name(vector)
    );
    if vector == 14 {
        let _ = write!(msg, " address={addr:#x} error={error:#x}");
        if (STACK_GUARD..STACK_GUARD + 0x1000).contains(&addr) {
            let _ = write!(msg, ": stack overflow");
        } else if addr < 0x1000 {
            let _ = write!(msg, ": null pointer");
        }
    } else if error != 0 {
        let _ = write!(msg, " error={error:#x}");
    }
    report_fatal(ErrorCode::Panic, msg.as_bytes())
}

/// The standard library's prebuilt `alloc` refers to the unwinder's `_Unwind_Resume` in its
/// landing pads. Function images are built with `panic = "abort"` and the panic handler never
/// returns, so it is never called; this definition satisfies the linker.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    reset()
}
