//! Fast tier: virtio-net on a tap device, with the tiny test guest.
//!
//! Each test makes its own network namespace with a tap device in it (`ip netns add`, `ip
//! tuntap add`, IPv6 off so the host stays quiet), runs the VMM inside it (`ip netns exec`)
//! with the tap as its interface, and exchanges raw Ethernet frames of EtherType 0x88b5 with
//! the guest through an `AF_PACKET` socket on the tap: the guest's frame must appear on the
//! tap (`net-tx`), and a frame sent on the tap must reach the guest (`net-rx`), with and
//! without merged receive buffers. No traffic leaves the namespace; it is deleted at the end.
//!
//! Needs root, /dev/kvm, iproute2 and the `vmm` binary.

use std::time::Duration;

use kiln_tests::metrics::Metrics;
use kiln_tests::netns::{tap_name, NetNs};
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, field, TinyOutput};
use kiln_tests::{require_bin, require_kvm, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const GUEST_MAC: [u8; 6] = [0x06, 0x00, 0xac, 0x10, 0x00, 0x02];
const HOST_MAC: [u8; 6] = [0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x02];
/// What the guest's `net-tx` frame carries (guest/tiny/src/scenarios/net.rs).
const GUEST_PAYLOAD: &[u8] = b"KILN-TINY-NET-TX frame from the guest";

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The VMM running `boot_args` inside `ns` on `tap`, its guest's lines followed.
fn start(ns: &NetNs, dir: &ScratchDir, tap: &str, boot_args: &str) -> Followed {
    start_with(ns, dir, tap, boot_args, "")
}

/// [`start`], with `iface_extra` added to the interface's fields.
fn start_with(
    ns: &NetNs,
    dir: &ScratchDir,
    tap: &str,
    boot_args: &str,
    iface_extra: &str,
) -> Followed {
    require_kvm();
    let text = format!(
        "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": {boot_args:?}}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"network-interfaces\": [{{\"iface_id\": \"eth0\", \"host_dev_name\": {tap:?}, \"guest_mac\": {:?}{iface_extra}}}]}}\n",
        tiny::tiny_guest().to_str().expect("utf-8 path"),
        mac_str(&GUEST_MAC)
    );
    let cfg = dir.write("vm.json", text);
    let mut cmd = ns.command(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(&cfg)
        .arg("--no-api")
        .arg("--metrics-path")
        .arg(dir.join("metrics.json"));
    Followed::spawn(&mut cmd)
}

/// Waits for the VMM to end; returns the guest's output and everything seen, for messages.
fn finish(vmm: Followed) -> (TinyOutput, String) {
    let f = vmm.finish(TIMEOUT);
    (tiny::assert_clean_run(&f), f.to_string())
}

fn metric(dir: &ScratchDir, name: &str) -> u64 {
    Metrics::read(&dir.join("metrics.json")).sum(name)
}

#[test]
fn a_frame_from_the_guest_appears_on_the_tap() {
    let ns = NetNs::new("kiln-net-tx");
    let dir = ScratchDir::new("kiln-virtio-net");
    let tap = tap_name("t");
    ns.add_tap(&tap, None);
    let sock = ns.packet_socket(&tap);
    let vmm = start(&ns, &dir, &tap, "kiln.test=net-tx");
    let frame = sock.recv_matching(TIMEOUT, |f| f.len() >= 14 && f[12..14] == ETHERTYPE);
    let (out, all) = finish(vmm);
    let dev = &out.topic("net")[0];
    assert_eq!(
        field(dev, "mac"),
        Some(mac_str(&GUEST_MAC).as_str()),
        "{all}"
    );
    assert_eq!(field(&out.topic("net tx")[0], "used"), Some("1"), "{all}");
    let frame = frame.unwrap_or_else(|| panic!("no frame of EtherType 0x88b5 on the tap\n{all}"));
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(&frame[6..12], &GUEST_MAC, "from the guest's MAC");
    assert_eq!(&frame[14..14 + GUEST_PAYLOAD.len()], GUEST_PAYLOAD);
    assert_eq!(metric(&dir, "net.tx_packets_count"), 1, "{all}");
}

/// Sends a frame of `payload_len` bytes to the guest once it is ready; returns the guest's
/// `net rx` fields.
fn receive(boot_args: &str, payload_len: usize) -> Vec<(String, String)> {
    let ns = NetNs::new("kiln-net-rx");
    let dir = ScratchDir::new("kiln-virtio-net");
    let tap = tap_name("r");
    ns.add_tap(&tap, None);
    let sock = ns.packet_socket(&tap);
    let mut vmm = start(&ns, &dir, &tap, boot_args);
    let left = TIMEOUT.saturating_sub(vmm.started().elapsed());
    assert!(
        vmm.wait_line("net rx ready", left),
        "the guest never said `net rx ready`; output:\n{}",
        vmm.seen()
    );
    let mut frame = Vec::new();
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&HOST_MAC);
    frame.extend_from_slice(&ETHERTYPE);
    let text = b"KILN-HOST-TO-GUEST frame from the host ";
    frame.extend((0..payload_len).map(|i| text[i % text.len()]));
    assert_eq!(sock.send(&frame).expect("send on the tap"), frame.len());
    let (out, all) = finish(vmm);
    let fields = out
        .topic("net rx")
        .into_iter()
        .find(|f| field(f, "len").is_some());
    let fields = fields.unwrap_or_else(|| panic!("no `net rx len=` line\n{all}"));
    assert_eq!(
        field(&fields, "len"),
        Some((14 + payload_len).to_string().as_str()),
        "{all}"
    );
    assert_eq!(field(&fields, "ethertype"), Some("0x88b5"));
    let payload = out
        .value("net rx len")
        .and_then(|v| v.split_once("payload="))
        .map(|(_, p)| p.to_string());
    assert_eq!(
        payload.as_deref(),
        Some(&String::from_utf8_lossy(&frame[14..14 + 64])[..]),
        "{all}"
    );
    assert_eq!(metric(&dir, "net.rx_packets_count"), 1, "{all}");
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_frame_on_the_tap_reaches_the_guest() {
    let fields = receive("kiln.test=net-rx", 200);
    assert_eq!(get(&fields, "buffers"), Some("1"));
}

#[test]
fn merged_receive_buffers_carry_a_frame_over_several_buffers() {
    // 12 + 14 + 300 bytes in 128-byte buffers: 3 buffers.
    let fields = receive("kiln.test=net-rx kiln.mrg=1", 300);
    assert_eq!(get(&fields, "buffers"), Some("3"));
}

#[test]
fn the_mtu_is_offered_to_the_guest() {
    let ns = NetNs::new("kiln-net-mtu");
    let dir = ScratchDir::new("kiln-virtio-net");
    let tap = tap_name("m");
    ns.add_tap(&tap, None);
    let vmm = start_with(&ns, &dir, &tap, "kiln.test=net-tx", r#", "mtu": 1400"#);
    let (out, all) = finish(vmm);
    let dev = &out.topic("net")[0];
    assert_eq!(field(dev, "mtu"), Some("1400"), "{all}");
    let features =
        u64::from_str_radix(field(dev, "features").unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_ne!(features & 1 << 3, 0, "VIRTIO_NET_F_MTU negotiated\n{all}");
    // Without an mtu the feature is not offered.
    let vmm = start(&ns, &dir, &tap, "kiln.test=net-tx");
    let (out, all) = finish(vmm);
    assert_eq!(field(&out.topic("net")[0], "mtu"), None, "{all}");
}

#[test]
fn an_mtu_out_of_range_is_refused() {
    let dir = ScratchDir::new("kiln-virtio-net");
    for mtu in [0u64, 67, 65536] {
        let text = format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}}}, \"network-interfaces\": [{{\"iface_id\": \"eth0\", \"host_dev_name\": \"tap0\", \"mtu\": {mtu}}}]}}",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        );
        let cfg = dir.write("vm.json", text);
        let f = kiln_tests::run_with_timeout(
            std::process::Command::new(require_bin("vmm"))
                .arg("--config-file")
                .arg(&cfg)
                .arg("--no-api"),
            TIMEOUT,
        );
        assert_eq!(f.code(), 152, "{f}");
        assert!(
            f.stderr.contains(&format!(
                "network-interfaces: mtu {mtu} is out of range (68 to 65535)"
            )),
            "{f}"
        );
    }
}
