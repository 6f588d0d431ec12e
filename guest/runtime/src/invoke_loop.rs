//! The invocation loop: connect to the worker, say Hello, then for each Invoke frame call the
//! handler and answer with Response or Error (guest/protocol). A VM restored from a snapshot
//! (its vsock transport reset by the device) connects and says Hello again, and goes on.

use crate::arch::{rdtsc, reset};
use crate::boot::{BOOT, START_TSC};
use crate::driver::{with_driver, CURRENT_ID, DRIVER};
use crate::fixed::FixedBuf;
use crate::serial::rt_log;
use crate::vsock::{Vsock, VsockError};
use alloc::string::ToString;
use alloc::vec::Vec;
use core::fmt::{Display, Write};
use kiln_guest_boot::cmdline::parse_num;
use kiln_protocol::{error_code_bytes, ErrorCode, Header, Kind, HEADER_LEN};

/// What the function's glue tells the runtime about the function.
pub struct FunctionConfig {
    /// Sent in Hello: the manifest's `name` (the builder passes it at compile time).
    pub name: &'static str,
    /// Larger events are refused with `EventTooLarge` (the manifest's `max_event_bytes`).
    pub max_event_bytes: u32,
}

/// Largest response sent; a larger one is reported as a handler error.
pub const MAX_RESPONSE_BYTES: usize = kiln_protocol::DEFAULT_MAX_PAYLOAD as usize;
/// How long the runtime tries to reach the worker at start (seconds).
const CONNECT_SECONDS: u64 = 5;

/// Longest error message sent (longer handler error texts are cut).
pub const MAX_ERROR_MESSAGE: usize = 64 * 1024;

fn send_frame(kind: Kind, id: u32, parts: &[&[u8]]) -> Result<(), VsockError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Callers bound every payload (responses to MAX_RESPONSE_BYTES, messages to
    // MAX_ERROR_MESSAGE), so the length fits the header's u32.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let header = Header::new(kind, id, len).encode();
    with_driver(|d| match parts {
        [] => d.write_all(&[&header]),
        [a] => d.write_all(&[&header, a]),
        [a, b] => d.write_all(&[&header, a, b]),
        _ => {
            let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            all.push(&header);
            all.extend_from_slice(parts);
            d.write_all(&all)
        }
    })
}

fn send_error(id: u32, code: ErrorCode, message: &str) -> Result<(), VsockError> {
    let mut cut = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = &message[..cut];
    send_frame(
        Kind::Error,
        id,
        &[&error_code_bytes(code), message.as_bytes()],
    )
}

/// Serves the function: never returns. Called by the glue of `kiln_runtime::function!`.
///
/// The VM stops (i8042 reset) when the worker closes the connection, when the stream is
/// broken, or after a panic has been reported.
pub fn serve<E, F>(config: &FunctionConfig, mut handler: F) -> !
where
    E: Display,
    F: FnMut(&[u8]) -> Result<Vec<u8>, E>,
{
    // SAFETY: set once by start.rs before the function's glue runs; only read afterwards.
    let Some(boot) = (unsafe { BOOT.get().as_ref() }) else {
        reset();
    };
    let verbose = boot.param(b"kiln.verbose").is_some();
    let stats = boot.param(b"kiln.stats").is_some();
    let port = boot
        .param(b"kiln.port")
        .and_then(parse_num)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(kiln_protocol::GUEST_CONNECT_PORT);
    if verbose {
        rt_log!(
            "start fn={} ring=3 cmdline={}",
            config.name,
            core::str::from_utf8(boot.cmdline).unwrap_or("<not UTF-8>")
        );
    }
    // SAFETY: written once by start.rs before this runs.
    let start_tsc = unsafe { *START_TSC.get() };
    let t_init = rdtsc();
    let mut vsock = match Vsock::init(boot.cmdline, crate::irq::init) {
        Ok(v) => v,
        Err(e) => {
            rt_log!("error vsock: {e}");
            reset();
        }
    };
    let t_connect = rdtsc();
    if let Err(e) = vsock.connect(port, CONNECT_SECONDS) {
        rt_log!("error vsock connect to host port {port}: {e}");
        reset();
    }
    if verbose {
        let now = rdtsc();
        rt_log!(
            "connected cid={} port={port} tsc: start->init {} init (irq+virtio) {} connect {}",
            vsock.guest_cid,
            t_init.wrapping_sub(start_tsc),
            t_connect.wrapping_sub(t_init),
            now.wrapping_sub(t_connect)
        );
    }
    // SAFETY: no other reference to DRIVER exists yet.
    unsafe { *DRIVER.get() = Some(vsock) };

    if let Err(e) = send_frame(Kind::Hello, 0, &[config.name.as_bytes()]) {
        rt_log!("error sending hello: {e}");
        reset();
    }
    loop {
        // Counted from the wait for the next frame: that wait is part of the invocation.
        let before = with_driver(|d| d.stats);
        let mut raw = [0u8; HEADER_LEN];
        let r = with_driver(|d| d.read_exact(&mut raw));
        let t0 = rdtsc();
        if let Err(e) = r.and_then(|()| serve_one(config, &raw, &mut handler)) {
            if with_driver(|d| d.was_reset()) && reconnect(config, port, verbose) {
                continue;
            }
            match e {
                VsockError::Closed => {
                    if verbose {
                        rt_log!("connection closed by the host");
                    }
                }
                e => rt_log!("error vsock: {e}"),
            }
            reset();
        }
        if stats {
            let after = with_driver(|d| d.stats);
            let mut line = FixedBuf::<160>::new();
            let _ = write!(
                line,
                "stats cycles={} waits={} notifies={} rx_packets={} tx_packets={} heap_in_use={}",
                rdtsc().wrapping_sub(t0),
                after.waits - before.waits,
                after.notifies - before.notifies,
                after.rx_packets - before.rx_packets,
                after.tx_packets - before.tx_packets,
                crate::HEAP.usage().0,
            );
            let _ = send_frame(Kind::Log, 0, &[line.as_bytes()]);
        }
    }
}

/// The VM was restored from a snapshot (the device reset the transport): connects to the
/// worker again and says Hello, as at start. False when that failed.
fn reconnect(config: &FunctionConfig, port: u32, verbose: bool) -> bool {
    if verbose {
        rt_log!("transport reset (restored from a snapshot): connecting again");
    }
    match with_driver(|d| d.reconnect(port, CONNECT_SECONDS)) {
        Ok(()) => match send_frame(Kind::Hello, 0, &[config.name.as_bytes()]) {
            Ok(()) => true,
            Err(e) => {
                rt_log!("error sending hello after the reset: {e}");
                false
            }
        },
        Err(e) => {
            rt_log!("error vsock reconnect to host port {port}: {e}");
            false
        }
    }
}

/// Handles one frame whose header is `raw`.
fn serve_one<E, F>(
    config: &FunctionConfig,
    raw: &[u8; HEADER_LEN],
    handler: &mut F,
) -> Result<(), VsockError>
where
    E: Display,
    F: FnMut(&[u8]) -> Result<Vec<u8>, E>,
{
    let header = match Header::decode(raw, u32::MAX) {
        Ok(h) => h,
        Err(e) => {
            // The stream is out of step: nothing after this can be trusted.
            rt_log!("error bad frame from the host: {e}");
            let _ = send_error(0, ErrorCode::Protocol, &e.to_string());
            with_driver(|d| d.flush(1));
            reset();
        }
    };
    let (id, len) = (header.id, header.len as usize);
    if header.kind != Kind::Invoke {
        with_driver(|d| d.skip(len))?;
        return send_error(
            id,
            ErrorCode::Protocol,
            &alloc::format!("unexpected {:?} frame from the host", header.kind),
        );
    }
    if header.len > config.max_event_bytes {
        with_driver(|d| d.skip(len))?;
        return send_error(
            id,
            ErrorCode::EventTooLarge,
            &alloc::format!(
                "event of {len} bytes is over the function's limit of {} bytes",
                config.max_event_bytes
            ),
        );
    }
    let mut event = Vec::new();
    if event.try_reserve_exact(len).is_err() {
        with_driver(|d| d.skip(len))?;
        return send_error(
            id,
            ErrorCode::OutOfMemory,
            &alloc::format!("no memory for an event of {len} bytes"),
        );
    }
    with_driver(|d| d.read_into(&mut event, len))?;

    // SAFETY: short borrows; the handler does not touch CURRENT_ID.
    unsafe { *CURRENT_ID.get() = Some(id) };
    let result = handler(&event);
    // SAFETY: as above.
    unsafe { *CURRENT_ID.get() = None };
    drop(event);
    match result {
        Ok(out) if out.len() > MAX_RESPONSE_BYTES => send_error(
            id,
            ErrorCode::Handler,
            &alloc::format!(
                "response of {} bytes is over the limit of {MAX_RESPONSE_BYTES} bytes",
                out.len()
            ),
        ),
        Ok(out) => send_frame(Kind::Response, id, &[&out]),
        Err(e) => send_error(id, ErrorCode::Handler, &e.to_string()),
    }
}
