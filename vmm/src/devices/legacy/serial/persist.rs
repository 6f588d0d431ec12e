//! Snapshots of COM1: vm-superio's register state and receive FIFO, and the tokens of the
//! output's bucket (`PUT /serial`'s `rate_limiter`).
//!
//! Where the output goes is the new VMM's own, as in Firecracker: the `serial_out_path` of
//! a `PUT /serial` sent to it before `PUT /snapshot/load`, else its `--serial-out` (or
//! stdout); never the path the snapshotted VMM wrote to, a host path of another process
//! (and jail). The bucket is the snapshot's, with its tokens, unless that `PUT /serial`
//! gave one of its own, which starts full ([`crate::persist::load`] decides).

use super::{Out, SerialDevice, SerialOutput};
use crate::devices::legacy::IrqLine;
use crate::devices::rate_limiter::persist::{BucketState, LimiterStateError};
use crate::snapshot::{CodecError, Decoder, Encoder, Persist};
use std::time::Instant;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Serial;

/// The UART's receive FIFO (vm-superio's).
const FIFO_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    #[error("serial console: cannot restore its state: {0}")]
    Restore(String),
    #[error("serial console: the snapshot has the state of an output bucket (rate_limiter), and the output has none")]
    NoBucket,
    #[error("serial console: the output's rate_limiter: {0}")]
    Bucket(LimiterStateError),
}

/// COM1's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSnapshot {
    pub uart: SerialState,
    /// The output bucket's tokens, when the output has a bucket.
    pub bucket: Option<BucketState>,
}

impl SerialDevice {
    pub fn save_state(&self) -> SerialSnapshot {
        let now = Instant::now();
        SerialSnapshot {
            uart: self.uart.state(),
            bucket: self
                .uart
                .writer()
                .limiter
                .as_ref()
                .map(|b| b.save_state_at(now)),
        }
    }

    /// Loads `s` (registers, FIFO), and `bucket` into the output's bucket (the snapshot's
    /// tokens, when the output's bucket is the snapshot's); raises the interrupt it had
    /// pending, so the irqchip must already be restored.
    pub fn restore_state(
        &mut self,
        s: &SerialSnapshot,
        bucket: Option<&BucketState>,
    ) -> Result<(), SerialStateError> {
        if let Some(saved) = bucket {
            let limiter = self
                .uart
                .writer_mut()
                .limiter
                .as_mut()
                .ok_or(SerialStateError::NoBucket)?;
            limiter
                .restore_state_at(saved, Instant::now(), "serial output")
                .map_err(SerialStateError::Bucket)?;
        }
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
        self.uart = Serial::from_state(&s.uart, IrqLine(irq), NoEvents, out)
            .map_err(|e| SerialStateError::Restore(format!("{e:?}")))?;
        Ok(())
    }
}

impl Persist for SerialSnapshot {
    fn encode(&self, e: &mut Encoder) {
        let s = &self.uart;
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
        e.option(self.bucket.as_ref());
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let uart = SerialState {
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
        };
        Ok(SerialSnapshot {
            uart,
            bucket: d.option("serial output bucket")?,
        })
    }
}
