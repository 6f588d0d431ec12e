//! `network-interfaces`: virtio-net devices on tap devices.

use super::rate_limiter::{validated_limiter, RateLimiterConfig};
use super::{check_id, ResourceError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| ResourceError::BadMac(s.to_string()))?;
            if part.len() != 2 {
                return Err(ResourceError::BadMac(s.to_string()));
            }
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| ResourceError::BadMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(ResourceError::BadMac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    /// The tap device, opened by name in the VMM's network namespace.
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<MacAddr>,
    /// Offered to the guest with VIRTIO_NET_F_MTU (68 to 65535).
    #[serde(default)]
    pub mtu: Option<u64>,
    /// Frames and bytes the guest receives per second.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Frames and bytes the guest sends per second.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// MTU bounds of Firecracker's API (the smallest IPv4 MTU to the largest a 16-bit field
/// holds).
pub const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

/// `PATCH /network-interfaces/{id}` after boot: change the rate limiters (a bucket given
/// replaces the running one, one left out, or `null`, stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceUpdate {
    /// Checks the id, and that it matches the path's id (`PATCH /network-interfaces/{id}`),
    /// and the limiters.
    pub fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("network interface", &self.iface_id, path_id)?;
        self.rx_rate_limiter =
            validated_limiter(self.rx_rate_limiter, "network-interfaces.rx_rate_limiter")?;
        self.tx_rate_limiter =
            validated_limiter(self.tx_rate_limiter, "network-interfaces.tx_rate_limiter")?;
        Ok(self)
    }
}

impl NetworkInterfaceConfig {
    pub(super) fn validated(mut self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("network interface", &self.iface_id, path_id)?;
        if let Some(mtu) = self.mtu.filter(|m| !MTU_RANGE.contains(m)) {
            return Err(ResourceError::Mtu(mtu));
        }
        self.rx_rate_limiter =
            validated_limiter(self.rx_rate_limiter, "network-interfaces.rx_rate_limiter")?;
        self.tx_rate_limiter =
            validated_limiter(self.tx_rate_limiter, "network-interfaces.tx_rate_limiter")?;
        let name = &self.host_dev_name;
        // IFNAMSIZ is 16 including the NUL.
        let ok = (1..=15).contains(&name.len())
            && !name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
            && name != "."
            && name != "..";
        if !ok {
            return Err(ResourceError::BadTapName(name.clone()));
        }
        Ok(self)
    }
}
