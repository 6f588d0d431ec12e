//! `memory-hotplug` (`PUT /hotplug/memory`, `PATCH /hotplug/memory`): the virtio-mem
//! device's region, in Firecracker's shapes and with its limits: blocks of at least 2 MiB
//! (a power of two), KVM slots of at least 128 MiB (a multiple of the block size), a total
//! of at least one slot (a multiple of the slot size).

use super::ResourceError;
use serde::{Deserialize, Serialize};

/// The smallest block, and the default (Firecracker's).
pub const MIN_BLOCK_SIZE_MIB: u32 = 2;
/// The smallest KVM slot, and the default (Firecracker's).
pub const MIN_SLOT_SIZE_MIB: u32 = 128;

fn default_block_size_mib() -> u32 {
    MIN_BLOCK_SIZE_MIB
}

fn default_slot_size_mib() -> u32 {
    MIN_SLOT_SIZE_MIB
}

/// `PUT /hotplug/memory` (before `InstanceStart`) and the config file's `memory-hotplug`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugConfig {
    /// The most memory the guest can plug, in MiB.
    pub total_size_mib: u32,
    /// The guest's unit of plugging and unplugging, in MiB.
    #[serde(default = "default_block_size_mib")]
    pub block_size_mib: u32,
    /// The host's unit of KVM memory slots, in MiB.
    #[serde(default = "default_slot_size_mib")]
    pub slot_size_mib: u32,
}

/// `PATCH /hotplug/memory` (on the running microVM).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugSizeUpdate {
    pub requested_size_mib: u32,
}

impl MemoryHotplugConfig {
    /// Firecracker's checks, in its order.
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        let refuse = |reason: String| Err(ResourceError::MemoryHotplug(reason));
        if self.block_size_mib < MIN_BLOCK_SIZE_MIB {
            return refuse(format!(
                "block_size_mib {} is lower than {MIN_BLOCK_SIZE_MIB} MiB",
                self.block_size_mib
            ));
        }
        if !self.block_size_mib.is_power_of_two() {
            return refuse(format!(
                "block_size_mib {} is not a power of 2",
                self.block_size_mib
            ));
        }
        if self.slot_size_mib < MIN_SLOT_SIZE_MIB {
            return refuse(format!(
                "slot_size_mib {} is lower than {MIN_SLOT_SIZE_MIB} MiB",
                self.slot_size_mib
            ));
        }
        if !self.slot_size_mib.is_multiple_of(self.block_size_mib) {
            return refuse(format!(
                "slot_size_mib {} is not a multiple of block_size_mib ({} MiB)",
                self.slot_size_mib, self.block_size_mib
            ));
        }
        if self.total_size_mib < self.slot_size_mib {
            return refuse(format!(
                "total_size_mib {} is lower than slot_size_mib ({} MiB)",
                self.total_size_mib, self.slot_size_mib
            ));
        }
        if !self.total_size_mib.is_multiple_of(self.slot_size_mib) {
            return refuse(format!(
                "total_size_mib {} is not a multiple of slot_size_mib ({} MiB)",
                self.total_size_mib, self.slot_size_mib
            ));
        }
        Ok(self)
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_size_mib) << 20
    }

    pub fn block_bytes(&self) -> u64 {
        u64::from(self.block_size_mib) << 20
    }

    pub fn slot_bytes(&self) -> u64 {
        u64::from(self.slot_size_mib) << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_json;

    fn cfg(total: u32, block: u32, slot: u32) -> MemoryHotplugConfig {
        MemoryHotplugConfig {
            total_size_mib: total,
            block_size_mib: block,
            slot_size_mib: slot,
        }
    }

    fn refusal(c: MemoryHotplugConfig) -> String {
        c.validated().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_firecrackers() {
        let c: MemoryHotplugConfig = parse_json(r#"{"total_size_mib": 1024}"#).unwrap();
        assert_eq!(c, cfg(1024, 2, 128));
        assert_eq!(c.validated().unwrap(), c);
        let e =
            parse_json::<MemoryHotplugConfig>(r#"{"total_size_mib": 128, "x": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `x`"), "{e}");
        assert!(parse_json::<MemoryHotplugConfig>("{}").is_err());
        let u: MemoryHotplugSizeUpdate = parse_json(r#"{"requested_size_mib": 4}"#).unwrap();
        assert_eq!(u.requested_size_mib, 4);
    }

    #[test]
    fn firecrackers_limits_are_kept_and_named() {
        assert_eq!(
            refusal(cfg(1024, 1, 128)),
            "memory-hotplug: block_size_mib 1 is lower than 2 MiB"
        );
        assert_eq!(
            refusal(cfg(1024, 3, 128)),
            "memory-hotplug: block_size_mib 3 is not a power of 2"
        );
        assert_eq!(
            refusal(cfg(1024, 2, 64)),
            "memory-hotplug: slot_size_mib 64 is lower than 128 MiB"
        );
        assert_eq!(
            refusal(cfg(1024, 4, 130)),
            "memory-hotplug: slot_size_mib 130 is not a multiple of block_size_mib (4 MiB)"
        );
        assert_eq!(
            refusal(cfg(64, 2, 128)),
            "memory-hotplug: total_size_mib 64 is lower than slot_size_mib (128 MiB)"
        );
        assert_eq!(
            refusal(cfg(1000, 2, 128)),
            "memory-hotplug: total_size_mib 1000 is not a multiple of slot_size_mib (128 MiB)"
        );
        assert!(cfg(256, 128, 128).validated().is_ok());
        assert!(cfg(512, 4, 256).validated().is_ok());
    }
}
