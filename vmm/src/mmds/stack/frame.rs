//! The wire formats MMDS speaks: Ethernet II, ARP for IPv4 over Ethernet, IPv4 without
//! options or fragments, and TCP headers; each read with every length checked (a field
//! outside the bytes is `None`, never a panic), each reply written whole with its checksums.

/// Ethernet II header: destination, source, EtherType.
pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// ARP for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// IPv4 header without options (the length of every header MMDS writes).
pub const IPV4_LEN: usize = 20;
pub const PROTO_TCP: u8 = 6;
/// TCP header without options, and with the MSS option MMDS puts in its SYN-ACK.
pub const TCP_LEN: usize = 20;
pub const TCP_SYN_LEN: usize = 24;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub type Mac = [u8; 6];
pub type Ip = [u8; 4];

pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The Internet checksum (RFC 1071) of the parts as if concatenated; `0` when the parts
/// already hold a correct checksum field.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// TCP's pseudo-header for the checksum.
pub fn pseudo_header(src: Ip, dst: Ip, tcp_len: u16) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&src);
    p[4..8].copy_from_slice(&dst);
    p[9] = PROTO_TCP;
    p[10..].copy_from_slice(&tcp_len.to_be_bytes());
    p
}

/// An ARP request for `target` as the guest sent it.
pub struct ArpRequest {
    pub sender_mac: Mac,
    pub sender_ip: Ip,
}

/// The ARP target address of an ARP packet, when there is one.
pub fn arp_target(arp: &[u8]) -> Option<Ip> {
    array(arp, 24)
}

/// An ARP packet that is a request for IPv4 over Ethernet, or `None`.
pub fn arp_request(arp: &[u8]) -> Option<ArpRequest> {
    let well_formed = be16(arp, 0)? == 1
        && be16(arp, 2)? == ETHERTYPE_IPV4
        && arp.get(4..6)? == [6, 4]
        && be16(arp, 6)? == 1;
    well_formed.then_some(ArpRequest {
        sender_mac: array(arp, 8)?,
        sender_ip: array(arp, 14)?,
    })
}

/// Writes the ARP reply "`ip` is at `mac`" to `req` into `out`; returns its length.
pub fn write_arp_reply(out: &mut [u8], mac: Mac, ip: Ip, req: &ArpRequest) -> Option<usize> {
    let f = out.get_mut(..ETH_LEN + ARP_LEN)?;
    f[..6].copy_from_slice(&req.sender_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let a = &mut f[ETH_LEN..];
    a[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&ip);
    a[18..24].copy_from_slice(&req.sender_mac);
    a[24..28].copy_from_slice(&req.sender_ip);
    Some(ETH_LEN + ARP_LEN)
}

/// What MMDS needs to know of an IPv4 packet before checking it: whether it is TCP for
/// `dst` port `port`.
pub fn is_tcp_to(ip: &[u8], dst: Ip, port: u16) -> bool {
    let ihl = ip.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    ip.get(9) == Some(&PROTO_TCP)
        && array::<4>(ip, 16) == Some(dst)
        && ihl >= IPV4_LEN
        && be16(ip, ihl + 2) == Some(port)
}

/// A checked IPv4 packet: its source and its payload.
pub struct Ipv4<'a> {
    pub src: Ip,
    pub dst: Ip,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Error {
    Version,
    HeaderLength,
    TotalLength,
    Checksum,
    Fragment,
}

/// Checks an IPv4 packet (version, header and total lengths against the bytes, header
/// checksum, not a fragment). Options are allowed and skipped.
pub fn parse_ipv4(ip: &[u8]) -> Result<Ipv4<'_>, Ipv4Error> {
    let first = *ip.first().ok_or(Ipv4Error::HeaderLength)?;
    if first >> 4 != 4 {
        return Err(Ipv4Error::Version);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < IPV4_LEN || ip.len() < ihl {
        return Err(Ipv4Error::HeaderLength);
    }
    let total = usize::from(be16(ip, 2).ok_or(Ipv4Error::TotalLength)?);
    if total < ihl || total > ip.len() {
        return Err(Ipv4Error::TotalLength);
    }
    let header = ip.get(..ihl).ok_or(Ipv4Error::HeaderLength)?;
    if checksum(&[header]) != 0 {
        return Err(Ipv4Error::Checksum);
    }
    let frag = be16(ip, 6).ok_or(Ipv4Error::HeaderLength)?;
    // More-fragments set, or a fragment offset.
    if frag & 0x3fff != 0 {
        return Err(Ipv4Error::Fragment);
    }
    Ok(Ipv4 {
        src: array(ip, 12).ok_or(Ipv4Error::HeaderLength)?,
        dst: array(ip, 16).ok_or(Ipv4Error::HeaderLength)?,
        payload: ip.get(ihl..total).ok_or(Ipv4Error::TotalLength)?,
    })
}

/// A checked TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// The MSS option, when the segment carries one.
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The sequence space the segment takes (SYN and FIN count one each).
    pub fn seq_len(&self) -> u32 {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        len.wrapping_add(u32::from(self.has(SYN)))
            .wrapping_add(u32::from(self.has(FIN)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpError {
    Short,
    DataOffset,
    Checksum,
    Option,
    Flags,
}

/// Checks a TCP segment from `src` to `dst`: header length, checksum, every option's
/// length, and flags that cannot go together (SYN with FIN or RST).
pub fn parse_tcp(seg: &[u8], src: Ip, dst: Ip) -> Result<Segment<'_>, TcpError> {
    if seg.len() < TCP_LEN {
        return Err(TcpError::Short);
    }
    let offset = usize::from(seg.get(12).ok_or(TcpError::Short)? >> 4) * 4;
    if offset < TCP_LEN || offset > seg.len() {
        return Err(TcpError::DataOffset);
    }
    let len = u16::try_from(seg.len()).map_err(|_| TcpError::Short)?;
    if checksum(&[&pseudo_header(src, dst, len), seg]) != 0 {
        return Err(TcpError::Checksum);
    }
    let flags = *seg.get(13).ok_or(TcpError::Short)?;
    if flags & SYN != 0 && flags & (FIN | RST) != 0 {
        return Err(TcpError::Flags);
    }
    let options = seg.get(TCP_LEN..offset).ok_or(TcpError::DataOffset)?;
    Ok(Segment {
        src_port: be16(seg, 0).ok_or(TcpError::Short)?,
        dst_port: be16(seg, 2).ok_or(TcpError::Short)?,
        seq: be32(seg, 4).ok_or(TcpError::Short)?,
        ack: be32(seg, 8).ok_or(TcpError::Short)?,
        flags,
        window: be16(seg, 14).ok_or(TcpError::Short)?,
        mss: mss_option(options)?,
        payload: seg.get(offset..).ok_or(TcpError::DataOffset)?,
    })
}

/// Walks the options (End, No-op, and kind-length-value ones, each length checked); returns
/// the MSS one (length 4) if present.
fn mss_option(mut opts: &[u8]) -> Result<Option<u16>, TcpError> {
    let mut mss = None;
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = opts.get(1..).unwrap_or(&[]),
            _ => {
                let len = usize::from(*opts.get(1).ok_or(TcpError::Option)?);
                if len < 2 || len > opts.len() {
                    return Err(TcpError::Option);
                }
                if kind == 2 {
                    if len != 4 {
                        return Err(TcpError::Option);
                    }
                    mss = Some(be16(opts, 2).ok_or(TcpError::Option)?);
                }
                opts = opts.get(len..).unwrap_or(&[]);
            }
        }
    }
    Ok(mss)
}

/// The addresses of a frame MMDS writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub our_mac: Mac,
    pub our_ip: Ip,
    pub peer_mac: Mac,
    pub peer_ip: Ip,
}

/// A TCP segment MMDS sends.
pub struct OutSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Adds the MSS option (SYN-ACK).
    pub mss: Option<u16>,
    pub payload: &'a [u8],
}

/// Writes Ethernet, IPv4 and TCP headers and the payload into `out`; returns the frame's
/// length, or `None` when it does not fit.
pub fn write_tcp(out: &mut [u8], route: &Route, ip_id: u16, s: &OutSegment) -> Option<usize> {
    let tcp_len = if s.mss.is_some() {
        TCP_SYN_LEN
    } else {
        TCP_LEN
    };
    let seg_len = tcp_len.checked_add(s.payload.len())?;
    let ip_total = u16::try_from(IPV4_LEN + seg_len).ok()?;
    let total = ETH_LEN + usize::from(ip_total);
    let f = out.get_mut(..total)?;
    f[..6].copy_from_slice(&route.peer_mac);
    f[6..12].copy_from_slice(&route.our_mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let (ip, tcp) = f[ETH_LEN..].split_at_mut(IPV4_LEN);
    ip.fill(0);
    // Version 4, 5 words of header; Don't Fragment; TTL 64.
    ip[0] = 0x45;
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&route.our_ip);
    ip[16..20].copy_from_slice(&route.peer_ip);
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    let ip_sum = checksum(&[ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    tcp[..2].copy_from_slice(&s.src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&s.dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&s.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&s.ack.to_be_bytes());
    // Header length in 32-bit words, in the high nibble; `tcp_len` is 20 or 24.
    tcp[12] = if s.mss.is_some() { 6 << 4 } else { 5 << 4 };
    tcp[13] = s.flags;
    tcp[14..16].copy_from_slice(&s.window.to_be_bytes());
    tcp[16..20].fill(0);
    if let Some(mss) = s.mss {
        tcp[20..22].copy_from_slice(&[2, 4]);
        tcp[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    tcp[tcp_len..].copy_from_slice(s.payload);
    let seg_len16 = u16::try_from(seg_len).ok()?;
    let sum = checksum(&[&pseudo_header(route.our_ip, route.peer_ip, seg_len16), tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_rfc_1071() {
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, so the checksum is 220d.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03], &[0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
        // An odd split gives the same sum.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2], &[0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }

    #[test]
    fn written_segments_parse_back() {
        let route = Route {
            our_mac: [6, 1, 2, 3, 4, 5],
            our_ip: [169, 254, 169, 254],
            peer_mac: [6, 0, 0, 0, 0, 2],
            peer_ip: [10, 0, 0, 2],
        };
        let mut buf = [0u8; 200];
        let s = OutSegment {
            src_port: 80,
            dst_port: 4000,
            seq: 7,
            ack: 9,
            flags: SYN | ACK,
            window: 1000,
            mss: Some(1460),
            payload: b"hi",
        };
        let n = write_tcp(&mut buf, &route, 1, &s).unwrap();
        assert_eq!(n, ETH_LEN + IPV4_LEN + TCP_SYN_LEN + 2);
        let ip = parse_ipv4(&buf[ETH_LEN..n]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((ip.src, ip.dst), (route.our_ip, route.peer_ip));
        let seg = parse_tcp(ip.payload, ip.src, ip.dst).unwrap();
        assert_eq!(
            (
                seg.src_port,
                seg.dst_port,
                seg.seq,
                seg.ack,
                seg.mss,
                seg.payload
            ),
            (80, 4000, 7, 9, Some(1460), &b"hi"[..])
        );
        assert!(write_tcp(&mut buf[..50], &route, 1, &s).is_none());
    }

    #[test]
    fn bad_options_are_refused() {
        assert_eq!(mss_option(&[1, 1, 2, 4, 5, 180, 0]), Ok(Some(1460)));
        assert_eq!(mss_option(&[2, 3, 5]), Err(TcpError::Option));
        assert_eq!(mss_option(&[8, 0]), Err(TcpError::Option));
        assert_eq!(mss_option(&[8, 10, 0]), Err(TcpError::Option));
        assert_eq!(mss_option(&[8]), Err(TcpError::Option));
        assert_eq!(mss_option(&[3, 3, 7, 0, 9, 9]), Ok(None));
    }
}
