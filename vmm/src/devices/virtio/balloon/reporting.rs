//! Free page reporting (`VIRTIO_BALLOON_F_REPORTING`, `free_page_reporting`): the guest
//! reports ranges of memory it freed, on its own, as the buffers of the reporting queue
//! (Linux's driver posts them device-writable, in chains of up to 32); the device drops each
//! range from the host mapping ([`super::discard::discard_range`]: checked against guest
//! RAM, cut to whole pages) and returns the chain. Counted as Firecracker does (ranges,
//! bytes freed, failures), plus Kiln's `balloon.invalid_ranges`.

use super::Balloon;
use crate::metrics::METRICS;

impl Balloon {
    /// The reporting queue (`index`).
    pub(super) fn reports_posted(&mut self, index: usize, ctx: &mut super::EventCtx) {
        self.drain(index, ctx, |mem, chain| {
            let Ok(chain) = chain else {
                METRICS.virtio.invalid_chains.inc();
                METRICS.balloon.free_page_report_fails.inc();
                return;
            };
            for buf in chain.readable.iter().chain(&chain.writable) {
                METRICS.balloon.free_page_report_count.inc();
                let d = super::discard::discard_range(mem, buf.addr.0, u64::from(buf.len));
                if d.invalid + d.fails > 0 {
                    METRICS.balloon.free_page_report_fails.inc();
                }
                METRICS
                    .balloon
                    .free_page_report_freed
                    .add(d.pages << super::discard::PAGE_SHIFT);
            }
        });
    }
}
