//! Line output on COM1 (I/O port 0x3f8): plain `out` per byte, no UART set-up, no status
//! polling (Kiln's VMM, Firecracker and QEMU accept a byte per write). Each byte is one exit
//! to the VMM (a few µs), so the runtime prints nothing on the normal path: only errors, and
//! its start-up lines with `kiln.verbose` on the command line.
//!
//! Lines are `KILN-RT: ...` (the runtime) or `KILN-FN: ...` (the function, through
//! [`crate::log!`]); control characters and `\` are escaped as `\xNN` so that a line can never
//! be split or forged by what it prints.

use crate::arch::outb;
use core::fmt;

/// COM1's transmit register.
pub const COM1: u16 = 0x3f8;
/// Prefix of the runtime's lines.
pub const RUNTIME_PREFIX: &str = "KILN-RT: ";
/// Prefix of the function's lines.
pub const FUNCTION_PREFIX: &str = "KILN-FN: ";

/// Writes text to COM1 with control characters escaped.
pub struct Serial;

impl Serial {
    pub fn raw(bytes: &[u8]) {
        for &b in bytes {
            outb(COM1, b);
        }
    }

    pub fn escaped(bytes: &[u8]) {
        for &b in bytes {
            if b == b'\\' || b < 0x20 || b == 0x7f {
                let hex = b"0123456789abcdef";
                Serial::raw(&[
                    b'\\',
                    b'x',
                    hex[usize::from(b >> 4)],
                    hex[usize::from(b & 0xf)],
                ]);
            } else {
                outb(COM1, b);
            }
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Serial::escaped(s.as_bytes());
        Ok(())
    }
}

/// Prints one line: `prefix`, the formatted text, a newline.
pub fn line(prefix: &str, args: fmt::Arguments<'_>) {
    Serial::raw(prefix.as_bytes());
    let _ = fmt::write(&mut Serial, args);
    outb(COM1, b'\n');
}

/// Prints a line from the function on the serial console: `KILN-FN: <text>`.
///
/// Each byte is an exit to the VMM: log sparingly on a hot path.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::serial::line($crate::serial::FUNCTION_PREFIX, format_args!($($arg)*))
    };
}

/// A line from the runtime itself.
macro_rules! rt_log {
    ($($arg:tt)*) => {
        $crate::serial::line($crate::serial::RUNTIME_PREFIX, format_args!($($arg)*))
    };
}
pub(crate) use rt_log;
