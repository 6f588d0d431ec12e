//! Line-oriented output on the 8250 UART at I/O port 0x3f8 (COM1).
//!
//! Every line is `KILN-TINY: <body>\n`. The UART is not initialised and the line status
//! register is not polled: the KVM VMMs this guest targets (Kiln, Firecracker, QEMU)
//! accept a byte on every `out` to the transmit register, and skipping both saves an exit
//! per byte. Numbers are printed as `0x` + lowercase hex without padding, or in decimal.
//!
//! [`Console`] counts the `error` lines it printed; the exit status reported to QEMU's
//! isa-debug-exit depends on it.

use crate::arch::outb;

/// I/O port of COM1's transmit holding register.
pub const COM1: u16 = 0x3f8;

/// Prefix of every line the guest prints.
pub const PREFIX: &str = "KILN-TINY: ";

fn put(byte: u8) {
    outb(COM1, byte);
}

/// The guest's only output channel.
pub struct Console {
    errors: u32,
}

impl Console {
    /// A console that has printed nothing yet.
    pub const fn new() -> Self {
        Console { errors: 0 }
    }

    /// Starts a line (`KILN-TINY: `); finish it with [`Line::end`].
    pub fn line(&mut self) -> Line<'_> {
        Line { _console: self }.s(PREFIX)
    }

    /// Starts an error line (`KILN-TINY: error `) and counts it.
    pub fn error(&mut self) -> Line<'_> {
        self.errors = self.errors.saturating_add(1);
        self.line().s("error ")
    }

    /// Number of error lines printed so far.
    pub fn errors(&self) -> u32 {
        self.errors
    }
}

/// A line being printed. Pieces are written as they are added.
#[must_use = "a line must be finished with .end()"]
pub struct Line<'a> {
    /// Held so that lines cannot interleave.
    _console: &'a mut Console,
}

impl Line<'_> {
    /// Appends text as is.
    pub fn s(self, text: &str) -> Self {
        for &b in text.as_bytes() {
            put(b);
        }
        self
    }

    /// Appends bytes with everything outside printable ASCII (and `\`) escaped as `\xNN`,
    /// so that data from the VMM can never break the line structure.
    pub fn escaped(self, bytes: &[u8]) -> Self {
        for &b in bytes {
            if b == b'\\' || !(0x20..0x7f).contains(&b) {
                put(b'\\');
                put(b'x');
                put(hex_digit(b >> 4));
                put(hex_digit(b & 0xf));
            } else {
                put(b);
            }
        }
        self
    }

    /// Appends `0x` and `value` in lowercase hex, without leading zeros.
    pub fn hex(self, value: u64) -> Self {
        put(b'0');
        put(b'x');
        let mut shift = 60;
        while shift > 0 && (value >> shift) & 0xf == 0 {
            shift -= 4;
        }
        loop {
            put(hex_digit(((value >> shift) & 0xf) as u8));
            if shift == 0 {
                break;
            }
            shift -= 4;
        }
        self
    }

    /// Appends `value` in decimal.
    pub fn dec(self, value: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut n = value;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            put(d);
        }
        self
    }

    /// Ends the line.
    pub fn end(self) {
        put(b'\n');
    }
}

fn hex_digit(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'a' + nibble - 10
    }
}
