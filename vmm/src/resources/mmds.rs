//! `mmds-config` (`PUT /mmds/config`): which network interfaces answer the guest's metadata
//! requests, at which link-local address, with which MMDS version and output form.

use super::{NetworkInterfaceConfig, ResourceError};
use crate::mmds::MmdsVersion;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The MMDS address when `ipv4_address` is not given (EC2's).
pub const DEFAULT_MMDS_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    /// Written back by `GET /vm/config` as the address in use (the default when not given).
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// Checks the config against the interfaces configured so far, and fills in the
    /// default address.
    pub fn validated(
        mut self,
        interfaces: &[NetworkInterfaceConfig],
    ) -> Result<Self, ResourceError> {
        let address = self.ipv4_address.unwrap_or(DEFAULT_MMDS_ADDRESS);
        if !usable_link_local(address) {
            return Err(ResourceError::MmdsAddress(address));
        }
        if self.network_interfaces.is_empty() {
            return Err(ResourceError::MmdsNoInterfaces);
        }
        if let Some(unknown) = self
            .network_interfaces
            .iter()
            .find(|id| !interfaces.iter().any(|n| &n.iface_id == *id))
        {
            return Err(ResourceError::MmdsUnknownInterface(unknown.clone()));
        }
        self.network_interfaces.dedup();
        self.ipv4_address = Some(address);
        Ok(self)
    }

    /// The address in use.
    pub fn address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_ADDRESS)
    }
}

/// 169.254.0.0/16 without its first and last /24, which RFC 3927 reserves.
fn usable_link_local(a: Ipv4Addr) -> bool {
    matches!(a.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_bounds() {
        for ok in ["169.254.169.254", "169.254.1.0", "169.254.254.255"] {
            assert!(usable_link_local(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["169.254.0.1", "169.254.255.1", "10.0.0.1", "169.253.1.1"] {
            assert!(!usable_link_local(bad.parse().unwrap()), "{bad}");
        }
    }
}
