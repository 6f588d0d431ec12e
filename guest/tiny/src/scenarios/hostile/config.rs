//! `virtio-config` (every virtio-blk and virtio-net device): writes of every width (1, 2, 4,
//! 8 bytes) over the first 256 bytes of configuration space and sparse ones up to the end
//! of the window, once after a reset and once with the device started: `config dev=blk|net
//! index=N writes=N changed=0|1 generation=N..N` (`changed`: the first 32 configuration
//! bytes differ afterwards), then `blk read` / `config net tx used=1`.

// Register values, lengths and indices are cut to the width of their ring or register
// field; every such value is in range by construction.
#![allow(clippy::cast_possible_truncation)]

use super::net::NetDev;
use crate::boot_info::BootInfo;
use crate::scenarios::blk::{open, read};
use crate::serial::Console;
use crate::virtio::net::F_MAC;
use crate::virtio::ring::ring;
use crate::virtio::{self, Mmio, DEVICE_BLK, DEVICE_NET};

/// The first 32 configuration bytes.
fn config_bytes(m: &Mmio) -> [u8; 32] {
    let mut c = [0u8; 32];
    for (i, b) in c.iter_mut().enumerate() {
        *b = m.read_width(virtio::REG_CONFIG + i as u32, 1) as u8;
    }
    c
}

/// Writes junk of every width over the configuration space; returns how many writes.
fn config_junk(m: &Mmio) -> u64 {
    let mut n = 0;
    for width in [1u32, 2, 4, 8] {
        for off in (0..0x100).step_by(width as usize) {
            m.write_width(virtio::REG_CONFIG + off, width, 0xa5a5_a5a5_a5a5_a5a5);
            n += 1;
        }
    }
    // Past the first 256 bytes, up to the end of the 4 KiB window.
    for off in (0x100..0xf00).step_by(0x100) {
        m.write_width(virtio::REG_CONFIG + off, 4, 0x5a5a_5a5a);
        n += 1;
    }
    n
}

fn config_device(con: &mut Console, m: Mmio, name: &str, index: u32) -> bool {
    m.reset();
    let before = config_bytes(&m);
    let gen0 = m.read(virtio::REG_CONFIG_GENERATION);
    let mut writes = config_junk(&m);
    let wanted = if name == "net" { F_MAC } else { 0 };
    if m.negotiate(wanted).is_err() {
        con.error()
            .s("config negotiation failed dev=")
            .s(name)
            .end();
        return false;
    }
    let (q0, q1) = (ring(0), ring(1));
    m.setup_queue(0, 8, &q0);
    if name == "net" {
        m.setup_queue(1, 8, &q1);
    }
    m.driver_ok();
    writes += config_junk(&m);
    let after = config_bytes(&m);
    let gen1 = m.read(virtio::REG_CONFIG_GENERATION);
    con.line()
        .s("config dev=")
        .s(name)
        .s(" index=")
        .dec(index.into())
        .s(" writes=")
        .dec(writes)
        .s(" changed=")
        .dec(u64::from(before != after))
        .s(" generation=")
        .dec(gen0.into())
        .s("..")
        .dec(gen1.into())
        .end();
    true
}

pub fn run(info: &BootInfo, con: &mut Console) {
    let mut devices = 0;
    for (id, name) in [(DEVICE_BLK, "blk"), (DEVICE_NET, "net")] {
        for index in 0..4 {
            let Some(m) = virtio::find(info.cmdline, id, index) else {
                break;
            };
            if config_device(con, m, name, index) {
                devices += 1;
            }
        }
    }
    if devices == 0 {
        con.error().s("config no virtio device").end();
        return;
    }
    // Every device still works.
    if let Some(mut b) = open(info, con) {
        read(&mut b, con, 0, 1);
    }
    if let Some(mut n) = NetDev::open(info, con) {
        let sent = n.send_frame(b"KILN-TINY config: the device still sends");
        con.line()
            .s("config net tx used=")
            .dec(u64::from(sent.is_some()))
            .end();
    }
}
