//! Kiln's HTTP/1.1 message layer, written once for every server in the project (the VMM's
//! Firecracker-compatible API and the `kiln serve` worker): parsing one request out of a
//! connection's bytes (with httparse, under fixed limits) and encoding responses. Routing,
//! connections and status decisions stay with each server.
//!
//! Limits: at most [`MAX_HEADERS`] headers in at most [`MAX_HEADER_BYTES`] bytes, a body
//! only through `Content-Length` and at most the configured payload size (default
//! [`DEFAULT_MAX_PAYLOAD_SIZE`], the VMM's `--http-api-max-payload-size`). `Transfer-Encoding` is
//! refused. Any violation is an [`HttpError`], answered with its status and the connection
//! closed (the stream position is unknown after a bad request).
//!
//! The project's clients (the worker talking to a VMM's API) read answers with
//! [`parse_response`]: the same header parsing and limits, a body framed by `Content-Length`.
//!
//! A [`Request`] keeps its headers (names as sent, values trimmed: within the limits above)
//! and the query of its target, for servers that read them (the worker's Lambda APIs); the
//! answer's bytes come from [`encode_response`], with any headers the server adds.

/// Largest request body accepted by default (Firecracker's default).
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 51_200;
/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 32;
/// Largest request line + headers, in bytes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why bytes on a connection are not a request the server accepts. Each variant maps to a
/// status code ([`HttpError::status`]); the connection is closed after the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("too many request headers (at most {MAX_HEADERS})")]
    TooManyHeaders,
    #[error("request line and headers are larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("invalid Content-Length header {0:?}")]
    BadContentLength(String),
    /// `path` is the request's (so that a server can answer in the shape of its route).
    #[error("request body of {len} bytes is larger than the limit of {limit} bytes (--http-api-max-payload-size)")]
    PayloadTooLarge {
        len: usize,
        limit: usize,
        path: String,
    },
    #[error("Transfer-Encoding is not supported: send the body with a Content-Length header")]
    TransferEncoding,
    #[error("unsupported HTTP version: only HTTP/1.0 and HTTP/1.1 are served")]
    Version,
    #[error("the request was not completed within {0} ms")]
    Timeout(u128),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::BadContentLength(_) => 400,
            HttpError::TooManyHeaders | HttpError::HeadersTooLarge => 431,
            HttpError::PayloadTooLarge { .. } => 413,
            HttpError::TransferEncoding => 501,
            HttpError::Version => 505,
            HttpError::Timeout(_) => 408,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
    /// Any other token (`POST`, `DELETE`, ...): routed to 405 or 404.
    Other(String),
}

impl Method {
    fn from_token(t: &str) -> Method {
        match t {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path of the request target, without query or fragment, as sent (not
    /// percent-decoded).
    pub path: String,
    /// The query of the request target (between `?` and `#`), as sent; empty when none.
    pub query: String,
    /// Every header in order: the name as sent, the value without surrounding whitespace
    /// (at most [`MAX_HEADERS`] of them, in at most [`MAX_HEADER_BYTES`] bytes).
    pub headers: Vec<(String, String)>,
    /// `None` when the request has no `Content-Length` (or it is 0).
    pub body: Option<Vec<u8>>,
    /// False when the client asked to close (`Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl Request {
    /// The value of the first header named `name` (compared without regard to case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header named `name` (compared without regard to case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed. `send_continue`: the headers are complete and ask for
    /// `100 Continue` before the body.
    Incomplete { send_continue: bool },
    /// A whole request, which used the first `consumed` bytes.
    Complete { request: Request, consumed: usize },
}

/// Parses the request at the start of `buf` (bytes received and not yet consumed).
pub fn parse_request(buf: &[u8], max_payload: usize) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(buf);
    if let Err(httparse::Error::Version) = parsed {
        // `HTTP/2.0` is a version this server does not speak; `FOO/1.1` is not HTTP.
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
        return Err(if version.starts_with(b"HTTP/") {
            HttpError::Version
        } else {
            HttpError::Malformed("invalid HTTP version".into())
        });
    }
    let Some(header_len) = head_len(parsed, buf)? else {
        return Ok(Parsed::Incomplete {
            send_continue: false,
        });
    };
    let method = Method::from_token(req.method.unwrap_or(""));
    let (path, query) = request_path(req.path.unwrap_or(""))?;
    let http11 = match req.version {
        Some(1) => true,
        Some(0) => false,
        _ => return Err(HttpError::Version),
    };

    let mut keep_alive = http11;
    let mut expect_continue = false;
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed(format!("header {} is not valid UTF-8", h.name)))?
            .trim();
        headers.push((h.name.to_string(), value.to_string()));
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect")
            && value.eq_ignore_ascii_case("100-continue")
        {
            expect_continue = http11;
        }
    }

    // After every header is known to be text: a malformed head is that, framed or not.
    let body_len = framing(req.headers)?.unwrap_or(0);
    if body_len > max_payload {
        return Err(HttpError::PayloadTooLarge {
            len: body_len,
            limit: max_payload,
            path,
        });
    }
    let end = header_len.saturating_add(body_len);
    let Some(body) = buf.get(header_len..end) else {
        return Ok(Parsed::Incomplete {
            send_continue: expect_continue && body_len > 0,
        });
    };
    let body = (!body.is_empty()).then(|| body.to_vec());
    Ok(Parsed::Complete {
        request: Request {
            method,
            path,
            query,
            headers,
            body,
            keep_alive,
        },
        consumed: end,
    })
}

/// One response parsed out of a connection's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    /// More bytes are needed.
    Incomplete,
    Complete {
        status: u16,
        body: Vec<u8>,
        /// Bytes of `buf` the response took (the next one starts after them).
        consumed: usize,
    },
}

/// Parses one HTTP/1.x response from the start of `buf` (for the project's clients, which
/// may read several pipelined answers from one connection). The body is framed by
/// `Content-Length`; without one it is empty, or, when `at_eof` (the server closed the
/// connection after it), the rest of `buf`. A head over [`MAX_HEADER_BYTES`] or
/// [`MAX_HEADERS`], a body over `max_body`, a bad or conflicting `Content-Length` and
/// `Transfer-Encoding` are errors.
pub fn parse_response(
    buf: &[u8],
    max_body: usize,
    at_eof: bool,
) -> Result<ParsedResponse, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp.parse(buf);
    let Some(header_len) = head_len(parsed, buf)? else {
        return Ok(ParsedResponse::Incomplete);
    };
    let status = resp.code.unwrap_or(0);
    let content_length = framing(resp.headers)?;
    let rest = buf.len().saturating_sub(header_len);
    let body_len = match content_length {
        Some(n) => n,
        None if at_eof => rest,
        None => 0,
    };
    if body_len > max_body {
        return Err(HttpError::PayloadTooLarge {
            len: body_len,
            limit: max_body,
            path: String::new(),
        });
    }
    let end = header_len.saturating_add(body_len);
    match buf.get(header_len..end) {
        Some(body) => Ok(ParsedResponse::Complete {
            status,
            body: body.to_vec(),
            consumed: end,
        }),
        None => Ok(ParsedResponse::Incomplete),
    }
}

/// The length of a message's head as httparse parsed it out of `buf`, or `None` while it is
/// incomplete; a head over [`MAX_HEADER_BYTES`] (complete or not) or [`MAX_HEADERS`] is an
/// error.
fn head_len(parsed: httparse::Result<usize>, buf: &[u8]) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEADER_BYTES => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEADER_BYTES => Ok(None),
        Ok(_) => Err(HttpError::HeadersTooLarge),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// How a message's body is framed: its `Content-Length` (`None` without one; several must
/// agree). `Transfer-Encoding` is refused: nothing here speaks chunked.
fn framing(headers: &[httparse::Header]) -> Result<Option<usize>, HttpError> {
    let mut content_length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HttpError::BadContentLength(String::from_utf8_lossy(h.value).into()))?
                .trim();
            content_length = Some(another_content_length(content_length, value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
    }
    Ok(content_length)
}

/// A `Content-Length` header's value, which must agree with an earlier one (`prev`).
fn another_content_length(prev: Option<usize>, value: &str) -> Result<usize, HttpError> {
    let n = parse_content_length(value)?;
    if prev.is_some_and(|prev| prev != n) {
        return Err(HttpError::BadContentLength(format!(
            "{value} (differs from an earlier Content-Length)"
        )));
    }
    Ok(n)
}

fn parse_content_length(value: &str) -> Result<usize, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadContentLength(value.to_string()));
    }
    value
        .parse()
        .map_err(|_| HttpError::BadContentLength(value.to_string()))
}

/// The path and the query of a request target: origin form (`/drives/x?y`) or absolute form
/// (`http://localhost/drives/x`); the fragment dropped.
fn request_path(target: &str) -> Result<(String, String), HttpError> {
    let origin = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/"),
        None => target,
    };
    if !origin.starts_with('/') {
        return Err(HttpError::Malformed(format!(
            "request target {target:?} is not an absolute path"
        )));
    }
    let without_fragment = origin.split('#').next().unwrap_or("/");
    let (path, query) = without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""));
    Ok((path.to_string(), query.to_string()))
}

/// An answer: a status, an optional JSON body, and for 405 the allowed methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
    pub allow: Option<&'static str>,
}

impl Response {
    /// 204 No Content: a successful PUT, PATCH or action.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// 200 OK with a JSON body.
    pub fn json(body: String) -> Self {
        Response {
            status: 200,
            body: Some(body),
            allow: None,
        }
    }

    /// An error: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: &str) -> Self {
        Response {
            status,
            body: Some(fault_body(message)),
            allow: None,
        }
    }

    /// The bytes on the wire. `close` adds `Connection: close`.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        let allow: Vec<(&str, &str)> = self.allow.map(|a| ("Allow", a)).into_iter().collect();
        let body = self
            .body
            .as_ref()
            .map(|b| ("application/json", b.as_bytes()));
        encode_response(self.status, &allow, body, close)
    }
}

/// The bytes of an answer: the status line, `Server: Kiln`, `headers` in order,
/// `Connection: close` when `close`, then `Content-Type` and `Content-Length` of `body`
/// (`(content type, bytes)`) and the body. Without a body, 204 carries no `Content-Length`
/// and any other status says 0. A CR or LF in a header value becomes a space: a value can
/// never start another header.
pub fn encode_response(
    status: u16,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    close: bool,
) -> Vec<u8> {
    let clean = |v: &str| v.replace(['\r', '\n'], " ");
    let mut head = format!("HTTP/1.1 {status} {}\r\nServer: Kiln\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{}: {}\r\n", clean(name), clean(value)));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
                clean(content_type),
                bytes.len()
            ));
            let mut out = head.into_bytes();
            out.extend_from_slice(bytes);
            out
        }
        None if status == 204 => {
            head.push_str("\r\n");
            head.into_bytes()
        }
        None => {
            head.push_str("Content-Length: 0\r\n\r\n");
            head.into_bytes()
        }
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// `{"fault_message": "<message>"}`, JSON-escaped.
pub fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// The reason phrase of `status` in a status line.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> (Request, usize) {
        match parse_request(raw.as_bytes(), DEFAULT_MAX_PAYLOAD_SIZE) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    fn error(raw: &[u8]) -> HttpError {
        match parse_request(raw, DEFAULT_MAX_PAYLOAD_SIZE) {
            Err(e) => e,
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    #[test]
    fn parses_requests_as_curl_sends_them() {
        let raw = "PUT /drives/rootfs HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Length: 2\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n{}";
        let (req, used) = complete(raw);
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.path, "/drives/rootfs");
        assert_eq!(req.body.as_deref(), Some(&b"{}"[..]));
        assert!(req.keep_alive);
        assert_eq!(used, raw.len());
    }

    #[test]
    fn table_of_request_shapes() {
        // (raw request, method, path, body, keep_alive)
        let cases: &[(&str, Method, &str, Option<&str>, bool)] = &[
            ("GET / HTTP/1.1\r\n\r\n", Method::Get, "/", None, true),
            (
                "GET /version?x=1#f HTTP/1.1\r\n\r\n",
                Method::Get,
                "/version",
                None,
                true,
            ),
            (
                "GET http://localhost/vm/config HTTP/1.1\r\n\r\n",
                Method::Get,
                "/vm/config",
                None,
                true,
            ),
            ("GET / HTTP/1.0\r\n\r\n", Method::Get, "/", None, false),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Method::Get,
                "/",
                None,
                true,
            ),
            (
                "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                Method::Get,
                "/",
                None,
                false,
            ),
            (
                "PUT /actions HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                Method::Put,
                "/actions",
                None,
                true,
            ),
            (
                "PUT /actions HTTP/1.1\r\n\r\n",
                Method::Put,
                "/actions",
                None,
                true,
            ),
            (
                "PATCH /vm HTTP/1.1\r\ncontent-length: 1\r\n\r\nx",
                Method::Patch,
                "/vm",
                Some("x"),
                true,
            ),
            (
                "DELETE /x HTTP/1.1\r\n\r\n",
                Method::Other("DELETE".into()),
                "/x",
                None,
                true,
            ),
            ("\r\nGET / HTTP/1.1\r\n\r\n", Method::Get, "/", None, true),
        ];
        for (raw, method, path, body, keep) in cases {
            let (req, used) = complete(raw);
            assert_eq!(&req.method, method, "{raw:?}");
            assert_eq!(req.path, *path, "{raw:?}");
            assert_eq!(req.body.as_deref(), body.map(str::as_bytes), "{raw:?}");
            assert_eq!(req.keep_alive, *keep, "{raw:?}");
            assert_eq!(used, raw.len(), "{raw:?}");
        }
    }

    #[test]
    fn headers_and_query_are_kept() {
        let raw = "POST /2015-03-31/functions/f/invocations?Qualifier=%24LATEST#frag HTTP/1.1\r\nHost: localhost\r\nX-Amz-Invocation-Type:  Event \r\nx-amz-log-type: Tail\r\nX-Multi: a\r\nx-multi: b\r\nContent-Length: 0\r\n\r\n";
        let (req, _) = complete(raw);
        assert_eq!(req.path, "/2015-03-31/functions/f/invocations");
        assert_eq!(req.query, "Qualifier=%24LATEST");
        assert_eq!(req.header("x-amz-invocation-type"), Some("Event"));
        assert_eq!(req.header("X-AMZ-LOG-TYPE"), Some("Tail"));
        assert_eq!(req.header("absent"), None);
        assert_eq!(req.header_values("X-Multi").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(req.headers.len(), 6);
        assert_eq!(
            req.headers[1],
            ("X-Amz-Invocation-Type".into(), "Event".into())
        );
        let (req, _) = complete("GET /x HTTP/1.1\r\n\r\n");
        assert_eq!((req.query.as_str(), req.headers.len()), ("", 0));
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let raw = "GET / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n";
        let (first, used) = complete(raw);
        assert_eq!(first.path, "/");
        let (second, _) = complete(&raw[used..]);
        assert_eq!(second.path, "/version");
    }

    #[test]
    fn incomplete_requests_wait_for_more_bytes() {
        for raw in [
            "",
            "GE",
            "GET / HTTP/1.1\r\n",
            "PUT /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        ] {
            assert_eq!(
                parse_request(raw.as_bytes(), 100),
                Ok(Parsed::Incomplete {
                    send_continue: false
                }),
                "{raw:?}"
            );
        }
        let expect = "PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse_request(expect.as_bytes(), 100),
            Ok(Parsed::Incomplete {
                send_continue: true
            })
        );
    }

    #[test]
    fn table_of_refused_requests() {
        let many_headers: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let huge_header = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        let huge_unterminated = format!("GET /{}", "a".repeat(MAX_HEADER_BYTES + 1));
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"\x00\x01\x02garbage\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 505),
            (b"GET / FOO/1.1\r\n\r\n".to_vec(), 400),
            (b"GET nopath HTTP/1.1\r\n\r\n".to_vec(), 400),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 1x\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                400,
            ),
            (
                b"PUT /vm HTTP/1.1\r\nContent-Length: 51201\r\n\r\n".to_vec(),
                413,
            ),
            (
                b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                501,
            ),
            (
                format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
                431,
            ),
            (huge_header.into_bytes(), 431),
            (huge_unterminated.into_bytes(), 431),
            (b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n".to_vec(), 400),
            // Malformed before anything about its framing (a header that is not text after
            // Transfer-Encoding: 400, not 501).
            (
                b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX: \xff\r\n\r\n".to_vec(),
                400,
            ),
        ];
        for (raw, status) in cases {
            let e = error(&raw);
            assert_eq!(
                e.status(),
                status,
                "{:?} gave {e}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn payload_limit_is_configurable() {
        let raw = "PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        assert!(matches!(
            parse_request(raw.as_bytes(), 10),
            Ok(Parsed::Complete { .. })
        ));
        assert_eq!(
            parse_request(raw.as_bytes(), 9),
            Err(HttpError::PayloadTooLarge {
                len: 10,
                limit: 9,
                path: "/vm".into()
            })
        );
    }

    #[test]
    fn responses_encode_status_headers_and_body() {
        let r = String::from_utf8(Response::no_content().encode(false)).unwrap();
        assert_eq!(r, "HTTP/1.1 204 No Content\r\nServer: Kiln\r\n\r\n");
        let r = String::from_utf8(Response::fault(400, "bad \"x\"").encode(true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"));
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["fault_message"], "bad \"x\"");
        let mut m = Response::fault(405, "no");
        m.allow = Some("GET, PUT");
        assert!(String::from_utf8(m.encode(false))
            .unwrap()
            .contains("Allow: GET, PUT\r\n"));
        let r = String::from_utf8(Response::no_content().encode(true)).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 204 No Content\r\nServer: Kiln\r\nConnection: close\r\n\r\n"
        );
        let r = String::from_utf8(Response::json("{}".into()).encode(false)).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 200 OK\r\nServer: Kiln\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn answers_carry_extra_headers_and_never_a_split_header() {
        let r = encode_response(
            202,
            &[("X-A", "1"), ("X-Evil", "a\r\nSet-Cookie: x")],
            Some(("text/plain", b"ok")),
            false,
        );
        let text = String::from_utf8(r).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 202 Accepted\r\nServer: Kiln\r\nX-A: 1\r\nX-Evil: a  Set-Cookie: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
        );
        let empty = String::from_utf8(encode_response(429, &[], None, true)).unwrap();
        assert_eq!(
            empty,
            "HTTP/1.1 429 Too Many Requests\r\nServer: Kiln\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn responses_are_framed_by_content_length_one_after_another() {
        let two = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nfaultHTTP/1.1";
        let ParsedResponse::Complete {
            status,
            body,
            consumed,
        } = parse_response(two, 100, false).unwrap()
        else {
            panic!("first answer incomplete")
        };
        assert_eq!((status, body.len()), (204, 0));
        let rest = &two[consumed..];
        assert_eq!(
            parse_response(rest, 100, false).unwrap(),
            ParsedResponse::Complete {
                status: 400,
                body: b"fault".to_vec(),
                consumed: rest.len() - "HTTP/1.1".len(),
            }
        );
        // Cut anywhere: incomplete, never an error.
        for cut in 0..rest.len() - "HTTP/1.1".len() {
            assert_eq!(
                parse_response(&rest[..cut], 100, false).unwrap(),
                ParsedResponse::Incomplete,
                "cut at {cut}"
            );
        }
        // Without Content-Length, at the connection's end: the rest is the body.
        let closed = b"HTTP/1.1 500 Internal Server Error\r\n\r\noops";
        assert!(matches!(
            parse_response(closed, 100, true).unwrap(),
            ParsedResponse::Complete { status: 500, ref body, .. } if body == b"oops"
        ));
    }

    #[test]
    fn bad_responses_are_errors() {
        for bad in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: lots\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, 100, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
