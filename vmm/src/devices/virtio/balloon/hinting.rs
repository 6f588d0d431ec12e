//! Free page hinting (`VIRTIO_BALLOON_F_FREE_PAGE_HINT`, `free_page_hinting`): a run the
//! host starts, in which the guest hands over ranges of memory it does not use, which the
//! device drops from the host mapping ([`super::discard::discard_range`]).
//!
//! The protocol, in command ids (`free_page_hint_cmd_id` in the configuration space, the
//! host's, and 4-byte device-readable buffers on the hinting queue, the guest's):
//!
//! 1. `PATCH /balloon/hinting/start`: the host writes a new id (2 and up; 0 is STOP and 1
//!    DONE) and signals a configuration change;
//! 2. the driver answers with that id on the queue, then posts the ranges it found free
//!    (any other buffer), then STOP (0);
//! 3. with `acknowledge_on_stop` (the default), the device answers the guest's STOP by
//!    writing DONE, upon which the driver takes its hinted pages back; without it, the host
//!    does so with `PATCH /balloon/hinting/stop`.
//!
//! As in Firecracker, a range counts only while the host's id is a run's (not STOP or
//! DONE) and the guest's last id is that run's: ranges of an old run, or sent before any
//! id, are returned without dropping anything (a range that could never be dropped is
//! still counted in `balloon.invalid_ranges`). A 4-byte device-writable buffer is not an
//! id: it is taken as a range and refused (less than a page). `GET /balloon/hinting/status`
//! answers the host's and the guest's last ids. A restored device says DONE (the run that
//! was going on when the snapshot was taken is over).

use super::{Balloon, BalloonError};
use crate::devices::virtio::queue::{read_stream, Buffer, Chain};
use crate::metrics::METRICS;
use serde::Serialize;
use vm_memory::GuestMemoryMmap;

/// The host asks the driver to stop a run (and the driver's end of a run).
pub const CMD_ID_STOP: u32 = 0;
/// The host is done with the hinted pages: the driver may take them back.
pub const CMD_ID_DONE: u32 = 1;
/// Bytes of the saved hinting state: last id, guest's id (flag and value), acknowledge.
const SAVED_LEN: usize = 10;

/// `GET /balloon/hinting/status` (Firecracker's shape: `guest_cmd` is `null` until the
/// driver sent an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HintingStatus {
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
}

/// The state of the hinting runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hinting {
    /// The id in the configuration space.
    host_cmd: u32,
    /// The id of the latest run started (the next run's is one more, at least 2).
    last_cmd_id: u32,
    /// The driver's latest id.
    pub(super) guest_cmd: Option<u32>,
    /// Answer the driver's STOP with DONE.
    ack_on_stop: bool,
}

/// What one queue event's chains asked for.
#[derive(Debug, Default)]
struct Taken {
    /// The driver's latest id ended a run (STOP, or DONE which the driver should not send).
    complete: bool,
}

impl Hinting {
    pub fn host_cmd(&self) -> u32 {
        self.host_cmd
    }

    pub fn status(&self) -> HintingStatus {
        HintingStatus {
            host_cmd: self.host_cmd,
            guest_cmd: self.guest_cmd,
        }
    }

    /// The saved form (the host's id is in the saved configuration space).
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SAVED_LEN);
        b.extend_from_slice(&self.last_cmd_id.to_le_bytes());
        b.push(u8::from(self.guest_cmd.is_some()));
        b.extend_from_slice(&self.guest_cmd.unwrap_or(0).to_le_bytes());
        b.push(u8::from(self.ack_on_stop));
        b
    }

    /// Takes the saved form (`host_cmd` is kept: it came with the configuration space).
    fn from_bytes(host_cmd: u32, b: &[u8]) -> Option<Hinting> {
        let b: &[u8; SAVED_LEN] = b.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let flag = |v: u8| match v {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        Some(Hinting {
            host_cmd,
            last_cmd_id: u32_at(0),
            guest_cmd: flag(b[4])?.then(|| u32_at(5)),
            ack_on_stop: flag(b[9])?,
        })
    }

    /// One chain of the hinting queue: ids are taken, ranges of the current run dropped.
    fn take_chain(&mut self, mem: &GuestMemoryMmap, chain: &Chain, taken: &mut Taken) {
        for buf in &chain.readable {
            if buf.len == 4 {
                let mut id = [0u8; 4];
                if read_stream(mem, std::slice::from_ref(buf), 0, &mut id) != 4 {
                    METRICS.balloon.free_page_hint_fails.inc();
                    continue;
                }
                let id = u32::from_le_bytes(id);
                self.guest_cmd = Some(id);
                taken.complete = id == CMD_ID_STOP || id == CMD_ID_DONE;
            } else {
                self.take_range(mem, buf);
            }
        }
        for buf in &chain.writable {
            self.take_range(mem, buf);
        }
    }

    fn take_range(&self, mem: &GuestMemoryMmap, buf: &Buffer) {
        let in_run = self.host_cmd != CMD_ID_STOP
            && self.host_cmd != CMD_ID_DONE
            && self.guest_cmd == Some(self.host_cmd);
        if !in_run {
            // Not dropped; still counted when it could not have been.
            if super::discard::whole_pages(mem, buf.addr.0, u64::from(buf.len)).is_none() {
                METRICS.balloon.invalid_ranges.inc();
            }
            return;
        }
        METRICS.balloon.free_page_hint_count.inc();
        let d = super::discard::discard_range(mem, buf.addr.0, u64::from(buf.len));
        if d.invalid + d.fails > 0 {
            METRICS.balloon.free_page_hint_fails.inc();
        }
        METRICS
            .balloon
            .free_page_hint_freed
            .add(d.pages << super::discard::PAGE_SHIFT);
    }
}

impl Balloon {
    fn hinting_configured(&self) -> Result<(), BalloonError> {
        if self.params.free_page_hinting {
            Ok(())
        } else {
            Err(BalloonError::HintingNotEnabled)
        }
    }

    /// Writes `cmd` as the host's id and tells the driver (a started device only).
    pub(super) fn set_hint_cmd(&mut self, cmd: u32) -> bool {
        let Some(a) = &self.active else {
            return false;
        };
        self.hinting.host_cmd = cmd;
        a.interrupt.signal_config_change();
        true
    }

    /// `PATCH /balloon/hinting/start`: a new run (its id one more than the last, at least 2).
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        self.hinting_configured()?;
        let mut id = self.hinting.last_cmd_id.wrapping_add(1);
        if id <= CMD_ID_DONE {
            id = CMD_ID_DONE + 1;
        }
        // Firecracker's order: the run is recorded even when the device is not started.
        self.hinting.ack_on_stop = acknowledge_on_stop;
        self.hinting.last_cmd_id = id;
        if self.set_hint_cmd(id) {
            Ok(())
        } else {
            Err(BalloonError::NotActivated)
        }
    }

    /// `PATCH /balloon/hinting/stop`: DONE, the driver takes its hinted pages back.
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        self.hinting_configured()?;
        if self.set_hint_cmd(CMD_ID_DONE) {
            Ok(())
        } else {
            Err(BalloonError::NotActivated)
        }
    }

    /// `GET /balloon/hinting/status`.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        self.hinting_configured()?;
        Ok(self.hinting.status())
    }

    /// The hinting queue (`index`): ids and ranges taken, each chain returned; a STOP from
    /// the driver is answered with DONE when the run was started so.
    pub(super) fn hints_posted(&mut self, index: usize, ctx: &mut super::EventCtx) {
        let mut h = self.hinting;
        let mut taken = Taken::default();
        self.drain(index, ctx, |mem, chain| match chain {
            Ok(c) => h.take_chain(mem, &c, &mut taken),
            Err(_) => {
                METRICS.virtio.invalid_chains.inc();
                METRICS.balloon.free_page_hint_fails.inc();
            }
        });
        self.hinting = h;
        if taken.complete && self.hinting.ack_on_stop {
            self.set_hint_cmd(CMD_ID_DONE);
        }
    }

    /// Takes the saved hinting state (after the configuration space gave the host's id).
    pub(super) fn take_saved_hinting(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.is_empty() {
            // A snapshot of a Kiln without hinting state: nothing was going on.
            return Ok(());
        }
        match Hinting::from_bytes(self.hinting.host_cmd, saved) {
            Some(h) => {
                self.hinting = h;
                Ok(())
            }
            None => Err(format!(
                "the balloon's saved hinting state is not {SAVED_LEN} valid bytes"
            )),
        }
    }

    /// Takes the host's id from a saved configuration space.
    pub(super) fn take_saved_hint_cmd(&mut self, id: u32) {
        self.hinting.host_cmd = id;
    }
}
