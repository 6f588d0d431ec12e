//! A minimal i8042 keyboard controller on ports 0x60 (data) and 0x64 (status/command).
//!
//! What it is for: the guest's CPU reset request (command 0xFE, or any "pulse output line"
//! command or output-port write that pulls the reset line low) becomes a clean VMM exit, and
//! the VMM can type Ctrl+Alt+Del into the guest's keyboard (IRQ 1). Enough of the controller
//! and keyboard protocol is modelled for Linux's i8042/atkbd drivers to probe it: the
//! command byte, self-tests, keyboard acknowledgements and identification.

use super::IrqLine;
use crate::devices::bus::BusDevice;
use std::collections::VecDeque;
use vm_superio::Trigger;

pub mod persist;

/// Offset of the data port (0x60) in the device's range.
pub const DATA: u64 = 0;
/// Offset of the status/command port (0x64).
pub const COMMAND: u64 = 4;
/// The device's range on the port-I/O bus: 0x60..=0x64.
pub const RANGE_LEN: u64 = 5;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
const STATUS_NOT_INHIBITED: u8 = 1 << 4;

const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLED: u8 = 1 << 4;
const CTR_AUX_DISABLED: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;
/// After POST: translation on, system flag set, keyboard interrupt on.
const CTR_DEFAULT: u8 = CTR_TRANSLATE | CTR_SYSTEM | CTR_KBD_INT;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xF0..=0xFF pulse output-port lines low for the bits that are 0; bit 0 is CPU reset.
const CMD_PULSE_FIRST: u8 = 0xf0;
/// The usual reset command: pulse only the reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;

/// Output port after POST: A20 enabled, reset line high (not asserted).
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
const BUFFER_LEN: usize = 16;

/// Ctrl, Alt, Del make codes as the guest reads them with translation on (set 1) and off
/// (set 2).
const CTRL_ALT_DEL_SET1: [u8; 4] = [0x1d, 0x38, 0xe0, 0x53];
const CTRL_ALT_DEL_SET2: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

pub struct I8042 {
    on_reset: Box<dyn Fn() + Send>,
    irq: IrqLine,
    control: u8,
    output_port: u8,
    last_was_command: bool,
    /// A controller command waiting for its data byte on port 0x60.
    pending_command: Option<u8>,
    /// A keyboard command waiting for its argument.
    pending_kbd: Option<u8>,
    buffer: VecDeque<u8>,
    last_read: u8,
    resets: u64,
}

impl I8042 {
    /// `on_reset` runs each time the guest asserts the CPU reset line.
    pub fn new(irq: IrqLine, on_reset: Box<dyn Fn() + Send>) -> Self {
        I8042 {
            on_reset,
            irq,
            control: CTR_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            last_was_command: false,
            pending_command: None,
            pending_kbd: None,
            buffer: VecDeque::with_capacity(BUFFER_LEN),
            last_read: 0,
            resets: 0,
        }
    }

    /// How many times the guest asked for a CPU reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn reset_cpu(&mut self) {
        self.resets += 1;
        (self.on_reset)();
    }

    /// A controller response (no interrupt: the driver polls for these).
    fn respond(&mut self, byte: u8) {
        if self.buffer.len() < BUFFER_LEN {
            self.buffer.push_back(byte);
        }
    }

    /// Bytes from the keyboard: queued, and IRQ 1 raised if the guest enabled it.
    fn keyboard_output(&mut self, bytes: &[u8]) -> bool {
        if self.buffer.len() + bytes.len() > BUFFER_LEN {
            return false;
        }
        self.buffer.extend(bytes);
        self.raise_kbd_irq();
        true
    }

    fn raise_kbd_irq(&self) {
        if self.control & CTR_KBD_INT != 0
            && self.control & CTR_KBD_DISABLED == 0
            && !self.buffer.is_empty()
        {
            // Writing an eventfd fails only when its counter would overflow.
            let _ = self.irq.trigger();
        }
    }

    /// Types Ctrl+Alt+Del; false when the output buffer has no room for it.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        let codes = if self.control & CTR_TRANSLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        self.keyboard_output(&codes)
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_NOT_INHIBITED;
        if !self.buffer.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.control & CTR_SYSTEM != 0 {
            s |= STATUS_SYSTEM;
        }
        if self.last_was_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        s
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending_command = None;
        match cmd {
            CMD_READ_CTR => self.respond(self.control),
            CMD_WRITE_CTR
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending_command = Some(cmd),
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => self.control &= !CTR_AUX_DISABLED,
            // No auxiliary device: report its interface as faulty.
            CMD_TEST_AUX => self.respond(0xff),
            CMD_SELF_TEST => {
                self.control |= CTR_SYSTEM;
                self.respond(0x55);
            }
            CMD_TEST_KBD => self.respond(0x00),
            CMD_DISABLE_KBD => self.control |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CTR_KBD_DISABLED,
            CMD_READ_INPUT_PORT => self.respond(0x00),
            CMD_READ_OUTPUT_PORT => self.respond(self.output_port),
            c if c >= CMD_PULSE_FIRST && c & 1 == 0 => self.reset_cpu(),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        if let Some(cmd) = self.pending_command.take() {
            match cmd {
                CMD_WRITE_CTR => {
                    self.control = value;
                    self.raise_kbd_irq();
                }
                CMD_WRITE_OUTPUT_PORT => {
                    self.output_port = value;
                    if value & 1 == 0 {
                        self.reset_cpu();
                    }
                }
                CMD_WRITE_KBD_BUFFER => {
                    self.keyboard_output(&[value]);
                }
                // CMD_WRITE_AUX_BUFFER, CMD_WRITE_AUX: there is no auxiliary device.
                _ => {}
            }
            return;
        }
        if self.pending_kbd.take().is_some() {
            self.keyboard_output(&[KBD_ACK]);
            return;
        }
        match value {
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC => {
                self.pending_kbd = Some(value);
                self.keyboard_output(&[KBD_ACK]);
            }
            KBD_ECHO => {
                self.keyboard_output(&[KBD_ECHO]);
            }
            KBD_IDENTIFY => {
                self.keyboard_output(&[KBD_ACK, 0xab, 0x83]);
            }
            KBD_RESET => {
                self.keyboard_output(&[KBD_ACK, KBD_SELF_TEST_OK]);
            }
            _ => {
                self.keyboard_output(&[KBD_ACK]);
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            DATA => {
                if let Some(b) = self.buffer.pop_front() {
                    self.last_read = b;
                    self.raise_kbd_irq();
                }
                self.last_read
            }
            COMMAND => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            DATA => self.data(*value),
            COMMAND => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> (I8042, Arc<AtomicU32>, EventFd) {
        let resets = Arc::new(AtomicU32::new(0));
        let r = resets.clone();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = I8042::new(
            IrqLine(evt.try_clone().unwrap()),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (d, resets, evt)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_and_output_port_reset() {
        let (mut d, resets, _e) = dev();
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        d.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(DATA, &[0x02]);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        // Pulsing a line other than reset does not reset.
        d.write(COMMAND, &[0xfd]);
        d.write(COMMAND, &[0xff]);
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        assert_eq!(d.resets(), 2);
    }

    #[test]
    fn controller_self_test_and_command_byte() {
        let (mut d, _r, _e) = dev();
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, COMMAND) & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        assert_eq!(rd(&mut d, DATA), 0x55);
        assert_eq!(rd(&mut d, COMMAND) & STATUS_OUTPUT_FULL, 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x07]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, DATA), 0x07);
    }

    #[test]
    fn keyboard_commands_are_acknowledged_with_an_interrupt() {
        let (mut d, _r, evt) = dev();
        d.write(DATA, &[KBD_RESET]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(
            (rd(&mut d, DATA), rd(&mut d, DATA)),
            (KBD_ACK, KBD_SELF_TEST_OK)
        );
        d.write(DATA, &[KBD_SET_LEDS]);
        d.write(DATA, &[0x07]);
        assert_eq!((rd(&mut d, DATA), rd(&mut d, DATA)), (KBD_ACK, KBD_ACK));
    }

    #[test]
    fn ctrl_alt_del_follows_translation() {
        let (mut d, _r, _e) = dev();
        assert!(d.send_ctrl_alt_del());
        let got: Vec<u8> = (0..4).map(|_| rd(&mut d, DATA)).collect();
        assert_eq!(got, CTRL_ALT_DEL_SET1);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[CTR_KBD_INT]);
        assert!(d.send_ctrl_alt_del());
        let got: Vec<u8> = (0..4).map(|_| rd(&mut d, DATA)).collect();
        assert_eq!(got, CTRL_ALT_DEL_SET2);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let (mut d, resets, _e) = dev();
        let mut wide = [0u8; 4];
        d.read(DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        d.write(COMMAND, &[0xfe, 0xfe]);
        d.write(COMMAND, &[]);
        d.write(2, &[0xfe]);
        for _ in 0..100 {
            d.write(DATA, &[KBD_IDENTIFY]);
        }
        assert!(d.buffer.len() <= BUFFER_LEN);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
    }
}
