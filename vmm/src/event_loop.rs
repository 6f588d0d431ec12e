//! The VMM thread's event loop: an epoll set of file descriptors, each with the handler that
//! runs when it is readable (or hung up).
//!
//! A handler sees only what it needs: the [`Sources`] (to watch or stop watching descriptors
//! of its own) and the loop's context `C`, the value the loop's owner lends to every handler
//! for the length of [`EventLoop::run`] (the running microVM, [`crate::vmm::Vmm`], which only
//! the API's handler uses; device handlers are written for any `C`). It answers with a
//! [`Flow`]: go on, stop watching this source, or stop the loop with a [`VmExit`].
//!
//! Sources are level-triggered: a handler that cannot make progress on a readable descriptor
//! must stop watching it rather than leave it ready.

use crate::exit::VmExit;
use std::os::fd::RawFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Readiness events taken from the epoll set per wait.
const EVENTS_PER_WAIT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the event loop's epoll set: {0}")]
    Create(std::io::Error),
    #[error("cannot watch file descriptor {fd}: {source}")]
    Watch { fd: RawFd, source: std::io::Error },
}

/// What a handler asks the loop to do next.
pub enum Flow {
    Continue,
    /// Stop watching this source.
    Remove,
    /// Stop the loop: the microVM ends with this reason.
    Exit(VmExit),
}

/// Something the loop watches. `handle` runs on the VMM thread when the source's file
/// descriptor is readable or hung up.
pub trait EventHandler<C>: Send {
    fn handle(&mut self, cx: &mut C, sources: &mut Sources<C>, events: EventSet) -> Flow;
}

/// Identifies a watched source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId(u64);

struct Source<C> {
    fd: RawFd,
    /// `None` while the handler runs (it is taken out so that it can use the [`Sources`]).
    handler: Option<Box<dyn EventHandler<C>>>,
}

/// The watched descriptors and their handlers: what a handler may change.
pub struct Sources<C> {
    epoll: Epoll,
    /// Slot `i` is the source with token `i + 1`; freed slots are reused.
    slots: Vec<Option<Source<C>>>,
}

impl<C> Sources<C> {
    /// Watches `fd` (level-triggered, readable) and runs `handler` when it is.
    pub fn add(
        &mut self,
        fd: RawFd,
        handler: Box<dyn EventHandler<C>>,
    ) -> Result<SourceId, EventLoopError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        let token = slot as u64 + 1;
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|source| EventLoopError::Watch { fd, source })?;
        let source = Some(Source {
            fd,
            handler: Some(handler),
        });
        match self.slots.get_mut(slot) {
            Some(free) => *free = source,
            None => self.slots.push(source),
        }
        Ok(SourceId(token))
    }

    /// Stops watching a source. A handler stops watching itself by returning
    /// [`Flow::Remove`] instead.
    pub fn remove(&mut self, id: SourceId) {
        let Some(slot) = usize::try_from(id.0).ok().and_then(|t| t.checked_sub(1)) else {
            return;
        };
        if let Some(src) = self.slots.get_mut(slot).and_then(Option::take) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, src.fd, EpollEvent::default());
        }
    }

    /// Runs the handler of the source with `token`; `None` unless it asks to stop the loop.
    fn dispatch(&mut self, cx: &mut C, token: u64, events: EventSet) -> Option<VmExit> {
        let slot = usize::try_from(token).ok()?.checked_sub(1)?;
        let mut handler = self.slots.get_mut(slot)?.as_mut()?.handler.take()?;
        match handler.handle(cx, self, events) {
            Flow::Continue => {
                // Put back unless the source went away meanwhile (its slot is then empty,
                // or holds a newer source with a handler of its own).
                if let Some(src) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                    if src.handler.is_none() {
                        src.handler = Some(handler);
                    }
                }
                None
            }
            Flow::Remove => {
                self.remove(SourceId(token));
                None
            }
            Flow::Exit(exit) => Some(exit),
        }
    }
}

/// The loop: its [`Sources`] and the wait that dispatches to them.
pub struct EventLoop<C> {
    sources: Sources<C>,
}

impl<C> EventLoop<C> {
    pub fn new() -> Result<Self, EventLoopError> {
        Ok(EventLoop {
            sources: Sources {
                epoll: Epoll::new().map_err(EventLoopError::Create)?,
                slots: Vec::new(),
            },
        })
    }

    /// See [`Sources::add`].
    pub fn add(
        &mut self,
        fd: RawFd,
        handler: Box<dyn EventHandler<C>>,
    ) -> Result<SourceId, EventLoopError> {
        self.sources.add(fd, handler)
    }

    /// See [`Sources::remove`].
    pub fn remove(&mut self, id: SourceId) {
        self.sources.remove(id)
    }

    /// The watched sources, for code that registers them in bulk.
    pub fn sources(&mut self) -> &mut Sources<C> {
        &mut self.sources
    }

    /// Waits for events and runs their handlers, lending them `cx`, until one returns
    /// [`Flow::Exit`]. A failing wait ends the loop with [`VmExit::VmmError`].
    pub fn run(&mut self, cx: &mut C) -> VmExit {
        let mut events = vec![EpollEvent::default(); EVENTS_PER_WAIT];
        loop {
            let n = match self.sources.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return VmExit::VmmError(format!("epoll_wait failed: {e}")),
            };
            for ev in events.iter().take(n) {
                if let Some(exit) = self.sources.dispatch(cx, ev.data(), ev.event_set()) {
                    return exit;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// Counts its events in the context; exits at `exit_at`; on its first event adds `spawn`.
    struct Counter {
        evt: EventFd,
        exit_at: u32,
        spawn: Option<EventFd>,
    }

    struct Once(EventFd);

    impl EventHandler<Vec<&'static str>> for Once {
        fn handle(
            &mut self,
            cx: &mut Vec<&'static str>,
            _: &mut Sources<Vec<&'static str>>,
            _: EventSet,
        ) -> Flow {
            let _ = self.0.read();
            cx.push("once");
            Flow::Remove
        }
    }

    impl EventHandler<Vec<&'static str>> for Counter {
        fn handle(
            &mut self,
            cx: &mut Vec<&'static str>,
            sources: &mut Sources<Vec<&'static str>>,
            _: EventSet,
        ) -> Flow {
            let _ = self.evt.read();
            cx.push("counter");
            if let Some(evt) = self.spawn.take() {
                let fd = evt.as_raw_fd();
                evt.write(1).unwrap();
                sources.add(fd, Box::new(Once(evt))).unwrap();
            }
            let seen = u32::try_from(cx.iter().filter(|s| **s == "counter").count()).unwrap();
            if seen >= self.exit_at {
                return Flow::Exit(VmExit::GuestPowerOff);
            }
            // Ready again for the next wait.
            self.evt.write(1).unwrap();
            Flow::Continue
        }
    }

    #[test]
    fn handlers_add_sources_remove_themselves_and_stop_the_loop() {
        let mut lp: EventLoop<Vec<&'static str>> = EventLoop::new().unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        evt.write(1).unwrap();
        let fd = evt.as_raw_fd();
        let counter = Counter {
            evt,
            exit_at: 3,
            spawn: Some(EventFd::new(EFD_NONBLOCK).unwrap()),
        };
        lp.add(fd, Box::new(counter)).unwrap();
        let mut seen = Vec::new();
        assert_eq!(lp.run(&mut seen), VmExit::GuestPowerOff);
        assert_eq!(seen.iter().filter(|s| **s == "counter").count(), 3);
        assert_eq!(seen.iter().filter(|s| **s == "once").count(), 1, "{seen:?}");
        // The removed source's slot is reused.
        let other = EventFd::new(EFD_NONBLOCK).unwrap();
        let id = lp
            .add(
                other.as_raw_fd(),
                Box::new(Once(other.try_clone().unwrap())),
            )
            .unwrap();
        assert_eq!(id, SourceId(2));
        lp.remove(id);
        lp.remove(id);
    }

    #[test]
    fn a_bad_descriptor_is_an_error_naming_it() {
        let mut lp: EventLoop<Vec<&'static str>> = EventLoop::new().unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let e = lp.add(-1, Box::new(Once(evt))).err().unwrap();
        assert!(
            e.to_string().starts_with("cannot watch file descriptor -1"),
            "{e}"
        );
    }
}
