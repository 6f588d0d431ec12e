//! The VMM's HTTP API from a test: one request on its Unix socket.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One HTTP request on a VMM's API socket: (status code, body). Panics when the socket does
/// not answer within 10 s.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write the request");
    // Read until one whole answer is in (`kiln_http` frames it), however it is split.
    let mut input = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = crate::io::read_some(&mut s, &mut buf).expect("the API's answer");
        input.extend_from_slice(&buf[..n]);
        match kiln_http::parse_response(&input, 1 << 20, n == 0) {
            Ok(kiln_http::ParsedResponse::Complete { status, body, .. }) => {
                return (status, String::from_utf8_lossy(&body).into_owned());
            }
            Ok(kiln_http::ParsedResponse::Incomplete) if n > 0 => {}
            other => panic!(
                "{method} {path}: bad answer {other:?}: {:?}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
}
