//! The bytes of the server's answers (through `kiln_http::encode_response`: status line,
//! `Server`, extra headers, `Connection: close` when the connection ends, `Content-Type`,
//! `Content-Length`), and Kiln's JSON error body `{"error": {"code", "message", "vm_id"}}`.

/// `405` with `Allow`, for a path that only accepts `allow`.
pub fn method_not_allowed(allow: &str, path: &str, close: bool) -> Vec<u8> {
    let body = error_body(
        "method_not_allowed",
        &format!("{path} only accepts {allow}"),
        None,
    );
    response(
        405,
        &[("Allow", allow.to_string())],
        "application/json",
        body.as_bytes(),
        close,
    )
}

fn error_body(code: &str, message: &str, vm_id: Option<&str>) -> String {
    let mut err = serde_json::json!({ "code": code, "message": message });
    if let Some(id) = vm_id {
        err["vm_id"] = id.into();
    }
    serde_json::json!({ "error": err }).to_string()
}

/// `{"error": {"code": ..., "message": ...}}` with `status`.
pub fn error_response(
    status: u16,
    code: &str,
    message: &str,
    vm_id: Option<&str>,
    close: bool,
) -> Vec<u8> {
    let body = error_body(code, message, vm_id);
    response(status, &[], "application/json", body.as_bytes(), close)
}

/// `status` with `v` as its JSON body.
pub fn json_response(status: u16, v: &serde_json::Value, close: bool) -> Vec<u8> {
    response(
        status,
        &[],
        "application/json",
        v.to_string().as_bytes(),
        close,
    )
}

/// A whole answer: `status`, `headers`, and `body` of type `content_type` (encoded by the
/// project's HTTP layer, `kiln_http::encode_response`).
pub fn response(
    status: u16,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    kiln_http::encode_response(status, &headers, Some((content_type, body)), close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_length_type_and_headers() {
        let r = response(
            200,
            &[("X-Kiln-Vm-Id", "echo-1-2".into())],
            "application/octet-stream",
            b"\x00hi",
            true,
        );
        let text = String::from_utf8_lossy(&r);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("X-Kiln-Vm-Id: echo-1-2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(r.ends_with(b"\r\n\r\n\x00hi"));
    }

    #[test]
    fn errors_are_structured_json() {
        let r = error_response(
            429,
            "concurrency_limit",
            "busy \"now\"",
            Some("x-1-1"),
            false,
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "concurrency_limit");
        assert_eq!(v["error"]["message"], "busy \"now\"");
        assert_eq!(v["error"]["vm_id"], "x-1-1");
    }
}
