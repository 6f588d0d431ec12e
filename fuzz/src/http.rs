//! HTTP clients of the server targets: the bytes a client sends cut into reads, and the
//! checks every answer a server writes must pass.

/// Splits `data` into reads whose sizes come from a small generator seeded by `seed`: with
/// its top bit set, 1 to 32 bytes each (a request cut anywhere); else all at once.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut x = u32::from(seed) | 0x100;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed & 0x80 != 0 {
            1 + (x % 32) as usize
        } else {
            rest.len()
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

/// One answer: its status, its headers (names lower-cased) and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Walks what a server wrote: each answer an HTTP/1.1 status line, headers and its
/// `Content-Length` bytes; an error's JSON body parses; nothing after an answer that says
/// `Connection: close`. Returns the answers (interim `100 Continue` left out).
pub fn check_answers(mut rest: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut closed = false;
    while !rest.is_empty() {
        assert!(!closed, "an answer after `Connection: close`");
        assert!(
            rest.starts_with(b"HTTP/1.1 "),
            "not a response: {:?}",
            String::from_utf8_lossy(&rest[..rest.len().min(64)])
        );
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response without the end of its headers");
        let head = std::str::from_utf8(&rest[..end]).expect("response headers are UTF-8");
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .expect("a numeric status");
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("a header line");
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = answer
            .header("content-length")
            .map(|v| v.parse().expect("a numeric Content-Length"))
            .unwrap_or(0);
        let total = end + 4 + len;
        assert!(total <= rest.len(), "a response cut short");
        answer.body = rest[end + 4..total].to_vec();
        rest = &rest[total..];
        if status == 100 {
            continue;
        }
        if answer.header("content-type") == Some("application/json") && status >= 400 {
            serde_json::from_slice::<serde_json::Value>(&answer.body)
                .expect("an error body is JSON");
        }
        closed = answer.header("connection") == Some("close");
        out.push(answer);
    }
    out
}
