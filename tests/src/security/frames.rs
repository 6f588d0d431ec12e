//! A hostile guest's side of a tap, without a guest: the test attaches to the jail's tap
//! (as the VMM would) and writes Ethernet frames to it, which the kernel receives as coming
//! from the guest; and the frames themselves (ARP, IPv4/UDP, IPv6 neighbour solicitations,
//! VLAN-tagged and other protocols), checksums included.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::in_netns;

/// A tap of a network namespace, attached to as the VMM attaches to it.
pub struct GuestTap(OwnedFd);

impl GuestTap {
    /// Attaches to tap `name` of namespace `ns` (root may attach to any tap).
    pub fn attach(ns: &str, name: &str) -> GuestTap {
        let name = name.to_owned();
        let fd = in_netns(Some(ns), move || {
            // SAFETY: a NUL-terminated path; the result is checked.
            let fd = unsafe {
                libc::open(
                    c"/dev/net/tun".as_ptr(),
                    libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
                )
            };
            assert!(
                fd >= 0,
                "open /dev/net/tun: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: ifreq is plain data; all-zero is valid.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
                *d = libc::c_char::from_ne_bytes([s]);
            }
            req.ifr_ifru.ifru_flags =
                libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap_or(0);
            // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            assert_eq!(
                rc,
                0,
                "TUNSETIFF {name}: {}",
                std::io::Error::last_os_error()
            );
            fd
        });
        GuestTap(fd)
    }

    /// Writes one frame, as the guest sending it.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: reads frame.len() bytes from frame.
        let n = unsafe { libc::write(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "write to the tap: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IP: u16 = 0x0800;
pub const ETH_IP6: u16 = 0x86dd;
pub const ETH_VLAN: u16 = 0x8100;

/// A locally administered unicast MAC made of `n`.
pub fn mac(n: u32) -> [u8; 6] {
    let b = n.to_be_bytes();
    [0x02, 0x5a, b[0], b[1], b[2], b[3]]
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// An 802.1Q-tagged frame.
pub fn vlan(dst: [u8; 6], src: [u8; 6], id: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = id.to_be_bytes().to_vec();
    inner.extend(ethertype.to_be_bytes());
    inner.extend(payload);
    ethernet(dst, src, ETH_VLAN, &inner)
}

/// ARP request "who has `target`? tell `sender_ip` (`sender_mac`)", broadcast from
/// `src` (the frame's source MAC).
pub fn arp_request(
    src: [u8; 6],
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(1u16.to_be_bytes());
    p.extend(ETH_IP.to_be_bytes());
    p.extend([6, 4]);
    p.extend(1u16.to_be_bytes());
    p.extend(sender_mac);
    p.extend(sender_ip.octets());
    p.extend([0; 6]);
    p.extend(target.octets());
    ethernet(BROADCAST, src, ETH_ARP, &p)
}

/// The Internet checksum of `data`, with `initial` added (for pseudo-headers).
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// An IPv4/UDP frame (UDP checksum 0: none).
pub fn udp4(
    dst: [u8; 6],
    src: [u8; 6],
    from: (Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
    let total = 20 + udp_len;
    let mut ip = Vec::new();
    ip.extend([0x45, 0]);
    ip.extend(total.to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend(from.0.octets());
    ip.extend(to.0.octets());
    let sum = checksum(0, &ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend(from.1.to_be_bytes());
    ip.extend(to.1.to_be_bytes());
    ip.extend(udp_len.to_be_bytes());
    ip.extend([0, 0]);
    ip.extend(payload);
    ethernet(dst, src, ETH_IP, &ip)
}

/// An IPv6 neighbour solicitation for `target` from `from`, with `lladdr` as its source
/// link-layer address option, to the target's solicited-node multicast group.
pub fn neighbour_solicitation(
    src: [u8; 6],
    from: Ipv6Addr,
    target: Ipv6Addr,
    lladdr: [u8; 6],
) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend(t);
    icmp.extend([1, 1]);
    icmp.extend(lladdr);
    let len = u16::try_from(icmp.len()).unwrap_or(0);
    // Pseudo-header: source, destination, length, next header.
    let mut pseudo = Vec::new();
    pseudo.extend(from.octets());
    pseudo.extend(group.octets());
    pseudo.extend(u32::from(len).to_be_bytes());
    pseudo.extend([0, 0, 0, 58]);
    let partial: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = checksum(partial, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend(len.to_be_bytes());
    ip.extend([58, 255]);
    ip.extend(from.octets());
    ip.extend(group.octets());
    ip.extend(icmp);
    let g = group.octets();
    let dst = [0x33, 0x33, g[12], g[13], g[14], g[15]];
    ethernet(dst, src, ETH_IP6, &ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let f = udp4(
            BROADCAST,
            mac(1),
            ("10.0.0.2".parse().unwrap(), 1),
            ("10.0.0.1".parse().unwrap(), 9),
            b"x",
        );
        // An IPv4 header's checksum over itself is 0.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let ns = neighbour_solicitation(
            mac(1),
            "fe80::1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            mac(1),
        );
        assert_eq!(&ns[0..2], &[0x33, 0x33]);
        assert_eq!(ns.len(), 14 + 40 + 32);
    }
}
