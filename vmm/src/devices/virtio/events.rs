//! virtio devices on the VMM thread's event loop ([`crate::event_loop`]).
//!
//! Each queue's eventfd (signalled by KVM through the ioeventfd on QueueNotify, or by the
//! transport) is watched by a [`QueueHandler`], which drains it and calls
//! [`VirtioDevice::process_queue`]. Devices bound their work per call; a device that stopped
//! at its limit asks for another turn ([`EventCtx::again`]) and the handler re-signals the
//! eventfd, so the queue is served again after every other ready source had its turn: a
//! guest flooding one queue cannot starve the other devices, the API or the console.
//!
//! File descriptors of a device (a tap, sockets) are watched on request
//! ([`EventCtx::watch`]) by an [`FdHandler`] each, and dropped again on
//! [`EventCtx::unwatch`]: a device that cannot make progress on a readable descriptor (no
//! receive buffers) stops watching it instead of spinning on a level-triggered event.

use super::{EventCtx, VirtioDevice};
use crate::event_loop::{EventHandler, EventLoopError, Flow, SourceId, Sources};
use crate::metrics::METRICS;
use crate::sync::lock;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// The descriptors a device currently has watched, by the device's token.
type Watched = Arc<Mutex<HashMap<u64, SourceId>>>;

/// What the event loop needs to run one device: the device and its queue eventfds.
pub struct DeviceEvents {
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub queue_evts: Vec<EventFd>,
}

impl DeviceEvents {
    /// Watches every queue eventfd of the device.
    pub fn register<C>(self, sources: &mut Sources<C>) -> Result<(), EventLoopError> {
        let watched: Watched = Arc::default();
        for (index, evt) in self.queue_evts.into_iter().enumerate() {
            let fd = evt.as_raw_fd();
            let handler = QueueHandler {
                device: self.device.clone(),
                index,
                evt,
                watched: watched.clone(),
            };
            sources.add(fd, Box::new(handler))?;
        }
        Ok(())
    }
}

/// Serves one queue's notifications.
struct QueueHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    index: usize,
    evt: EventFd,
    watched: Watched,
}

impl<C> EventHandler<C> for QueueHandler {
    fn handle(&mut self, _cx: &mut C, sources: &mut Sources<C>, _events: EventSet) -> Flow {
        // Drained first: a notification arriving while the queue is processed is not lost.
        let _ = self.evt.read();
        METRICS.vmm.device_events.inc();
        let mut ctx = EventCtx::default();
        lock(&self.device).process_queue(self.index, &mut ctx);
        if ctx.wants_again() {
            METRICS.virtio.work_deferred.inc();
            let _ = self.evt.write(1);
        }
        apply(sources, &self.device, &self.watched, ctx, None)
    }
}

/// Serves one device file descriptor.
struct FdHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    token: u64,
    watched: Watched,
}

impl<C> EventHandler<C> for FdHandler {
    fn handle(&mut self, _cx: &mut C, sources: &mut Sources<C>, events: EventSet) -> Flow {
        METRICS.vmm.device_events.inc();
        let mut ctx = EventCtx::default();
        lock(&self.device).process_fd(self.token, events, &mut ctx);
        apply(sources, &self.device, &self.watched, ctx, Some(self.token))
    }
}

/// Carries out a device's watch/unwatch requests. The source being dispatched (`own`) is not
/// removed here but by returning [`Flow::Remove`], as the run loop expects.
fn apply<C>(
    sources: &mut Sources<C>,
    device: &Arc<Mutex<dyn VirtioDevice>>,
    watched: &Watched,
    mut ctx: EventCtx,
    own: Option<u64>,
) -> Flow {
    let mut flow = Flow::Continue;
    for (token, fd) in ctx.take_changes() {
        let mut map = lock(watched);
        match fd {
            None => {
                if let Some(id) = map.remove(&token) {
                    if own == Some(token) {
                        flow = Flow::Remove;
                    } else {
                        sources.remove(id);
                    }
                }
            }
            Some(fd) => {
                if map.contains_key(&token) {
                    continue;
                }
                let handler = FdHandler {
                    device: device.clone(),
                    token,
                    watched: watched.clone(),
                };
                match sources.add(fd, Box::new(handler)) {
                    Ok(id) => {
                        map.insert(token, id);
                    }
                    Err(e) => {
                        crate::log_error!("virtio: cannot watch device descriptor {fd}: {e}");
                        METRICS.virtio.watch_fails.inc();
                    }
                }
            }
        }
    }
    flow
}
