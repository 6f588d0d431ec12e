//! The muxer's connection table: connections by (host port, guest port) and by host socket,
//! the host ports of host-initiated connections, and keeping each connection's epoll
//! interest, receive-queue entry and timer up to date as it changes.

use super::{Muxer, RxItem, FIRST_LOCAL_PORT};
use crate::devices::virtio::vsock::connection::{Connection, KillReason, State};
use crate::metrics::METRICS;
use std::os::fd::AsRawFd;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

/// A connection: (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

impl Muxer {
    /// Removes a connection (closing its host stream), with an RST to the guest if asked.
    pub(super) fn remove(&mut self, key: ConnKey, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        if conn.registered != (false, false) {
            let _ = self.ctl(ControlOperation::Delete, fd, EventSet::empty());
        }
        if conn.host_initiated {
            self.local_ports.remove(&conn.local_port);
        }
        if conn.queued {
            self.rxq.retain(|i| *i != RxItem::Conn(key));
        }
        if rst {
            self.enq_rst(key);
        }
        if let Some(reason) = conn.kill_reason() {
            crate::log_debug!(
                "vsock: connection host port {} guest port {} reset: {reason:?}",
                key.local_port,
                key.peer_port
            );
        }
        METRICS.vsock.conns_removed.inc();
    }

    /// After anything happened to a connection: removes it when it ended, otherwise brings its
    /// epoll interest, its place in the receive work queue and the timer up to date.
    pub(super) fn update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.state() {
            State::Killed => return self.remove(key, true),
            State::Closed => return self.remove(key, false),
            _ => {}
        }
        let want = conn.interest();
        let fd = conn.stream().as_raw_fd();
        if want != conn.registered {
            let mut events = EventSet::empty();
            if want.0 {
                events |= EventSet::IN;
            }
            if want.1 {
                events |= EventSet::OUT;
            }
            let op = if want == (false, false) {
                ControlOperation::Delete
            } else if conn.registered == (false, false) {
                ControlOperation::Add
            } else {
                ControlOperation::Modify
            };
            let data = u64::try_from(fd).unwrap_or(u64::MAX);
            match self.epoll.ctl(op, fd, EpollEvent::new(events, data)) {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    METRICS.vsock.conn_event_fails.inc();
                    crate::log_warn!("vsock: cannot watch a host connection: {e}");
                    conn.kill(KillReason::HostIo);
                    return self.remove(key, true);
                }
            }
        }
        if conn.has_rx_work() && !conn.queued {
            conn.queued = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
        if conn.deadline().is_some() {
            self.ensure_timer();
        }
    }

    pub(super) fn add(&mut self, conn: Connection) {
        let key = ConnKey {
            local_port: conn.local_port,
            peer_port: conn.peer_port,
        };
        if conn.host_initiated {
            self.local_ports.insert(conn.local_port);
        }
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        METRICS.vsock.conns_added.inc();
        self.update(key);
    }

    /// The next free host port for a host-initiated connection.
    pub(super) fn allocate_local_port(&mut self) -> u32 {
        // At most MAX_CONNECTIONS ports are taken, so this ends within that many steps.
        loop {
            let port = self.next_local_port;
            self.next_local_port = if port >= u32::MAX >> 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.local_ports.contains(&port) {
                return port;
            }
        }
    }
}
