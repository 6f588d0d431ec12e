//! The HTTP API on a Unix socket (`--api-sock PATH`), with Firecracker's paths, verbs,
//! bodies and status codes.
//!
//! Threads: [`start`] binds the socket and spawns the API thread (`kiln_api`), which owns the
//! listener and every client ([`server`]), parses HTTP (the `kiln-http` crate) and routes
//! each request to a typed [`ApiRequest`] ([`router`]). A routed request crosses to the VMM
//! thread over an `mpsc` channel, with an [`EventFd`] that the VMM thread's event loop polls;
//! code on the VMM thread (the `controller` module, a layer above this one) applies it and
//! sends the [`ApiReply`] back over a second channel ([`ApiChannel`]). The VMM thread only
//! ever does non-blocking channel operations: it never waits for the API thread, whatever
//! the clients do.
//!
//! - [`request`]: the requests and answers that cross between the threads;
//! - [`router`]: HTTP verb, path and body to [`ApiRequest`];
//! - [`server`]: the listener, the connections and their limits;
//! - here: the channel between the threads, and the HTTP edge that turns answers into
//!   responses (the status codes are decided here and in the router, nowhere else).

pub mod request;
pub mod router;
pub mod server;

pub use request::{Action, ApiReply, ApiRequest, RequestError, VmStateChange, VmmData};

use crate::metrics::METRICS;
use kiln_http as http;
use kiln_http::Response;
pub use server::Limits;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api: cannot bind the API socket {path:?}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("api: cannot create the API event fd: {0}")]
    EventFd(std::io::Error),
    #[error("api: cannot start the API thread: {0}")]
    Thread(std::io::Error),
    #[error("api: waiting for API requests failed: {0}")]
    Wait(std::io::Error),
    #[error("api: the API thread has stopped")]
    ThreadGone,
}

/// The VMM thread's end of the API: poll [`ApiChannel::event_fd`] for readability, then call
/// [`ApiChannel::handle_pending`].
#[derive(Debug)]
pub struct ApiChannel {
    requests: Receiver<ApiRequest>,
    replies: Sender<ApiReply>,
    event: EventFd,
    /// Set once a read found the API thread gone.
    disconnected: std::cell::Cell<bool>,
}

impl ApiChannel {
    /// Readable when requests are queued.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Resets the event (call before taking requests: one queued after this read writes it
    /// again, so no wake-up is lost).
    pub fn take_event(&self) -> bool {
        self.event.read().is_ok()
    }

    /// The next queued request, without blocking. Every request taken must be answered with
    /// [`ApiChannel::reply`] before the next one is taken (the API thread waits for it).
    pub fn next_request(&self) -> Option<ApiRequest> {
        match self.requests.try_recv() {
            Ok(req) => Some(req),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.disconnected.set(true);
                None
            }
        }
    }

    /// Answers the request taken last.
    pub fn reply(&self, reply: ApiReply) {
        // If the API thread died there is no one to tell.
        let _ = self.replies.send(reply);
    }

    /// True once the API thread is gone (nothing more will come).
    pub fn is_disconnected(&self) -> bool {
        self.disconnected.get()
    }

    /// Answers every queued request with `handler`, without blocking. Returns false once
    /// the API thread is gone (nothing more will come).
    pub fn handle_pending(&self, mut handler: impl FnMut(ApiRequest) -> ApiReply) -> bool {
        self.take_event();
        while let Some(req) = self.next_request() {
            self.reply(handler(req));
        }
        !self.is_disconnected()
    }

    /// Blocks until a request is queued or `timeout` passes (for a loop with nothing else to
    /// wait for, before the microVM runs). Returns whether a request may be queued.
    pub fn wait(&self, timeout: Duration) -> Result<bool, ApiError> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut fd = [libc::pollfd {
            fd: self.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fd` is a valid array of one pollfd for the whole call; poll only writes
        // its `revents`.
        let rc = unsafe { libc::poll(fd.as_mut_ptr(), 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(ApiError::Wait(e));
        }
        Ok(rc > 0)
    }
}

/// The API thread's end: forwards a routed request and waits for its reply.
struct VmmLink {
    requests: Sender<ApiRequest>,
    replies: Receiver<ApiReply>,
    event: EventFd,
}

impl VmmLink {
    fn call(&self, req: ApiRequest) -> Response {
        if self.requests.send(req).is_err() || self.event.write(1).is_err() {
            METRICS.api_server.sync_response_fails.inc();
            return Response::fault(500, "the VMM thread is not accepting requests");
        }
        match self.replies.recv() {
            Ok(Ok(VmmData::Empty)) => Response::no_content(),
            Ok(Ok(VmmData::Json(body))) => Response::json(body),
            Ok(Err(e)) => Response::fault(e.status(), &e.to_string()),
            Err(_) => {
                METRICS.api_server.sync_response_fails.inc();
                Response::fault(500, "the VMM thread stopped before answering")
            }
        }
    }

    /// Answers one parsed HTTP request: routed here, applied on the VMM thread.
    fn dispatch(&self, req: http::Request) -> Response {
        METRICS.api_server.requests.inc();
        crate::log_info!("API: {} {}", req.method.as_str(), req.path);
        if let Some(body) = &req.body {
            crate::log_debug!("API: body {:?}", String::from_utf8_lossy(body));
        }
        let (endpoint, routed) = router::route(&req);
        let counters = endpoint.and_then(|e| router::counters(e, &req.method));
        if let Some((count, _)) = counters {
            count.inc();
        }
        let response = match routed {
            Ok(api_req) => self.call(api_req),
            Err(e) => {
                if e.unknown {
                    METRICS.api_server.unknown_requests.inc();
                }
                let mut r = Response::fault(e.status, &e.message);
                r.allow = e.allow;
                r
            }
        };
        if response.status >= 400 {
            if let Some((_, Some(fails))) = counters {
                fails.inc();
            }
            let message = response.body.as_deref().unwrap_or("");
            crate::log_warn!(
                "API: {} {} -> {} {message}",
                req.method.as_str(),
                req.path,
                response.status
            );
        } else {
            crate::log_debug!(
                "API: {} {} -> {}",
                req.method.as_str(),
                req.path,
                response.status
            );
        }
        response
    }
}

/// Binds the API socket at `path` (which must not exist, as with Firecracker), records the
/// API-ready time, and starts the API thread. Returns the VMM thread's end.
pub fn start(path: &Path, limits: Limits) -> Result<ApiChannel, ApiError> {
    let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let event = EventFd::new(EFD_NONBLOCK).map_err(ApiError::EventFd)?;
    let (req_tx, req_rx) = channel();
    let (reply_tx, reply_rx) = channel();
    let link = VmmLink {
        requests: req_tx,
        replies: reply_rx,
        event: event.try_clone().map_err(ApiError::EventFd)?,
    };
    std::thread::Builder::new()
        .name("kiln_api".into())
        .spawn(move || {
            crate::seccomp::install(crate::seccomp::ThreadKind::Api);
            if let Err(e) = server::serve(listener, limits, |req| link.dispatch(req)) {
                crate::log_error!("{e}; the API is no longer served");
            }
        })
        .map_err(ApiError::Thread)?;
    crate::timing::record_api_ready();
    crate::log_info!("API: listening on {}", path.display());
    Ok(ApiChannel {
        requests: req_rx,
        replies: reply_tx,
        event,
        disconnected: std::cell::Cell::new(false),
    })
}
