//! Snapshots of COM1: vm-superio's register state and receive FIFO. The output side (the
//! VMM's stdout or `--serial-out`) is the new VMM's own.

use super::{Out, SerialDevice, SerialOutput};
use crate::devices::legacy::IrqLine;
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

/// The UART's receive FIFO (vm-superio's).
const FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    #[error("serial console: cannot restore its state: {0}")]
    Restore(String),
}

/// COM1's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSnapshot(pub SerialState);

impl SerialDevice {
    pub fn save_state(&self) -> SerialSnapshot {
        SerialSnapshot(self.uart.state())
    }

    /// Loads `s` (registers, FIFO); raises the interrupt it had pending, so the irqchip must
    /// already be restored.
    pub fn restore_state(&mut self, s: &SerialSnapshot) -> Result<(), SerialStateError> {
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| SerialStateError::Restore(format!("cannot clone its irqfd: {e}")))?;
        // The output moves to the restored UART; the old one keeps a placeholder.
        let placeholder = SerialOutput {
            out: Out::Stdout(std::io::stdout()),
            first_byte: None,
            limiter: None,
        };
        let out = std::mem::replace(self.uart.writer_mut(), placeholder);
        self.uart = Serial::from_state(&s.0, IrqLine(irq), NoEvents, out)
            .map_err(|e| SerialStateError::Restore(format!("{e:?}")))?;
        Ok(())
    }
}

impl Persist for SerialSnapshot {
    fn encode(&self, e: &mut Encoder) {
        let s = &self.0;
        for b in [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ] {
            e.u8(b);
        }
        e.bytes(&s.in_buffer);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(SerialSnapshot(SerialState {
            baud_divisor_low: d.u8("serial divisor latch (low)")?,
            baud_divisor_high: d.u8("serial divisor latch (high)")?,
            interrupt_enable: d.u8("serial interrupt enable")?,
            interrupt_identification: d.u8("serial interrupt identification")?,
            line_control: d.u8("serial line control")?,
            line_status: d.u8("serial line status")?,
            modem_control: d.u8("serial modem control")?,
            modem_status: d.u8("serial modem status")?,
            scratch: d.u8("serial scratch")?,
            in_buffer: d.bytes("serial receive FIFO", FIFO_SIZE)?.to_vec(),
        }))
    }
}
