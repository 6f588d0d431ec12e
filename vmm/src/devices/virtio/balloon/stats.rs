//! The balloon's statistics: what the driver reports in its stats buffer (virtio-balloon's
//! `(tag: u16, value: u64)` entries, little-endian, packed in 10 bytes), kept as the latest
//! value per tag and answered by `GET /balloon/statistics` with Firecracker's field names.
//! An unknown tag is counted (`balloon.stats_update_fails`) and skipped.

use crate::metrics::METRICS;
use serde::Serialize;

/// Bytes of one statistics entry.
pub const ENTRY_LEN: usize = 10;
/// Most entries read from one stats buffer (the spec defines 16 tags; a longer buffer is
/// read this far and the rest ignored).
pub const MAX_ENTRIES: usize = 64;

/// `GET /balloon/statistics`: the balloon's target and size, and the driver's latest
/// values (absent until the driver reported them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// The field a virtio-balloon statistics tag (`VIRTIO_BALLOON_S_*`) fills.
    fn slot(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return None,
        })
    }

    /// Takes the entries of one stats buffer (`bytes`: whole entries; a partial one at the
    /// end is ignored). Returns how many were unknown.
    pub fn update(&mut self, bytes: &[u8]) -> u64 {
        let mut unknown = 0u64;
        for entry in bytes.chunks_exact(ENTRY_LEN) {
            let (tag, value) = entry.split_at(2);
            let tag = u16::from_le_bytes([tag[0], tag[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(value);
            match self.slot(tag) {
                Some(slot) => *slot = Some(u64::from_le_bytes(v)),
                None => unknown += 1,
            }
        }
        METRICS.balloon.stats_update_fails.add(unknown);
        unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, v: u64) -> Vec<u8> {
        [tag.to_le_bytes().as_slice(), &v.to_le_bytes()].concat()
    }

    #[test]
    fn entries_fill_their_fields_and_unknown_tags_are_counted() {
        let mut s = BalloonStats::default();
        let buf = [
            entry(4, 1 << 20),
            entry(5, 2 << 20),
            entry(99, 1),
            entry(15, 7),
        ]
        .concat();
        assert_eq!(s.update(&buf[..buf.len() - 3]), 1);
        assert_eq!(s.free_memory, Some(1 << 20));
        assert_eq!(s.total_memory, Some(2 << 20));
        assert_eq!(s.direct_reclaim, None, "the cut entry is ignored");
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["free_memory"], 1 << 20);
        assert!(json.get("swap_in").is_none());
        assert_eq!(json["actual_mib"], 0);
    }
}
