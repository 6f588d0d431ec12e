//! `network-interfaces`: virtio-net devices on tap devices.

use super::spec::{refuse_if_present, NotYet};
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
    /// The MTU advertised to the guest: not in Kiln yet (refused when set).
    #[serde(default)]
    pub mtu: Option<NotYet>,
    /// Rate limiting: not in Kiln yet (refused when set).
    #[serde(default)]
    pub rx_rate_limiter: Option<NotYet>,
    #[serde(default)]
    pub tx_rate_limiter: Option<NotYet>,
}

/// `PATCH /network-interfaces/{id}`: Firecracker changes rate limiters with it, which Kiln
/// does not have yet; the body is validated and an absent (or `null`) limiter changes
/// nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<NotYet>,
    #[serde(default)]
    pub tx_rate_limiter: Option<NotYet>,
}

const RATE_LIMITING: &str = "rate limiting (rx_rate_limiter, tx_rate_limiter)";

impl NetworkInterfaceUpdate {
    /// Checks the id, and that it matches the path's id (`PATCH /network-interfaces/{id}`).
    pub fn validated(self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("network interface", &self.iface_id, path_id)?;
        refuse_if_present(&self.rx_rate_limiter, "network-interfaces", RATE_LIMITING)?;
        refuse_if_present(&self.tx_rate_limiter, "network-interfaces", RATE_LIMITING)?;
        Ok(self)
    }
}

impl NetworkInterfaceConfig {
    pub(super) fn validated(self, path_id: Option<&str>) -> Result<Self, ResourceError> {
        check_id("network interface", &self.iface_id, path_id)?;
        refuse_if_present(
            &self.mtu,
            "network-interfaces",
            "advertising an MTU to the guest (mtu)",
        )?;
        refuse_if_present(&self.rx_rate_limiter, "network-interfaces", RATE_LIMITING)?;
        refuse_if_present(&self.tx_rate_limiter, "network-interfaces", RATE_LIMITING)?;
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
