//! Clients of an API socket: waiting until it answers (Kiln's API, QEMU's QMP), and one
//! HTTP request to Kiln's API.

use crate::process::TIMEOUT;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

pub fn poll_socket(sock: &Path, req: &[u8], deadline: Instant) -> Result<Instant, String> {
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            s.set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            if !req.is_empty() {
                s.write_all(req).map_err(|e| format!("write: {e}"))?;
            }
            let mut b = [0u8; 256];
            let n = s.read(&mut b).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("socket closed without an answer".into());
            }
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{} never accepted", sock.display()));
        }
        thread::sleep(Duration::from_micros(50));
    }
}

pub fn api_request(sock: &Path, method: &str, path: &str, body: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = [0u8; 1024];
    let n = s.read(&mut b).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&b[..n]).to_string();
    if !resp.starts_with("HTTP/1.1 2") {
        return Err(format!("{method} {path}: {resp}"));
    }
    Ok(resp)
}
