//! Snapshots of the i8042: the command byte, output port, pending commands and the output
//! buffer. The reset callback is the new VMM's own.

use super::{BUFFER_LEN, I8042};
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};

/// The i8042's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct I8042State {
    pub control: u8,
    pub output_port: u8,
    pub last_was_command: bool,
    pub pending_command: Option<u8>,
    pub pending_kbd: Option<u8>,
    pub buffer: Vec<u8>,
    pub last_read: u8,
}

impl I8042 {
    pub fn save_state(&self) -> I8042State {
        I8042State {
            control: self.control,
            output_port: self.output_port,
            last_was_command: self.last_was_command,
            pending_command: self.pending_command,
            pending_kbd: self.pending_kbd,
            buffer: self.buffer.iter().copied().collect(),
            last_read: self.last_read,
        }
    }

    /// Loads `s`; a pending keyboard byte raises IRQ 1 again if the guest enabled it (the
    /// irqchip must already be restored).
    pub fn restore_state(&mut self, s: &I8042State) {
        self.control = s.control;
        self.output_port = s.output_port;
        self.last_was_command = s.last_was_command;
        self.pending_command = s.pending_command;
        self.pending_kbd = s.pending_kbd;
        self.buffer = s.buffer.iter().copied().take(BUFFER_LEN).collect();
        self.last_read = s.last_read;
        self.raise_kbd_irq();
    }
}

fn put_opt(e: &mut Encoder, v: Option<u8>) {
    e.bool(v.is_some());
    e.u8(v.unwrap_or(0));
}

fn get_opt(d: &mut Decoder<'_>, what: &'static str) -> Result<Option<u8>, CodecError> {
    let some = d.bool(what)?;
    match (some, d.u8(what)?) {
        (true, v) => Ok(Some(v)),
        (false, 0) => Ok(None),
        (false, v) => Err(CodecError::Invalid {
            what,
            value: format!("{v} where none is saved"),
        }),
    }
}

impl Persist for I8042State {
    fn encode(&self, e: &mut Encoder) {
        e.u8(self.control);
        e.u8(self.output_port);
        e.bool(self.last_was_command);
        put_opt(e, self.pending_command);
        put_opt(e, self.pending_kbd);
        e.bytes(&self.buffer);
        e.u8(self.last_read);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(I8042State {
            control: d.u8("i8042 command byte")?,
            output_port: d.u8("i8042 output port")?,
            last_was_command: d.bool("i8042 last write")?,
            pending_command: get_opt(d, "i8042 pending command")?,
            pending_kbd: get_opt(d, "i8042 pending keyboard command")?,
            buffer: d.bytes("i8042 output buffer", BUFFER_LEN)?.to_vec(),
            last_read: d.u8("i8042 last byte read")?,
        })
    }
}
