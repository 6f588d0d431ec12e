//! MMDS's HTTP side (`vmm/src/mmds/http.rs`): a guest's request parsed by `kiln-http` and
//! answered from the data store (`http::respond`), with V1 or V2 token rules.
//!
//! Input: u8 options (bit 0: V2, bit 1: imds_compat), then the request bytes.
//!
//! The same bytes also go to the response parser the worker reads a VMM's answers with
//! (`kiln_http::parse_response`, bit 2: at the connection's end): no panic, and what it says
//! it took lies within the input.
//!
//! Besides "no panic": every answer is an HTTP/1.1 status line with a known status and a
//! `Content-Length` that matches its body (also as `parse_response` reads it); under V2 a GET without a token header is 401,
//! and the same GET with a token the store just issued is not; under V1 no GET is 401.
#![no_main]

use kiln_fuzz::Input;
use kiln_http::{parse_request, Parsed};
use libfuzzer_sys::fuzz_target;
use vmm::mmds::{http, MmdsStore, MmdsVersion};

fn check(resp: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(resp);
    assert!(text.starts_with("HTTP/1.1 "), "{text}");
    let status: u16 = text[9..12].parse().expect("a status");
    assert!(
        matches!(status, 200 | 400 | 401 | 404 | 405 | 413 | 431 | 501 | 505),
        "{text}"
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("the end of the headers");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .expect("a number");
    assert_eq!(len, body.len(), "{text}");
    assert_eq!(
        kiln_http::parse_response(resp, usize::MAX, false),
        Ok(kiln_http::ParsedResponse::Complete {
            status,
            body: body.as_bytes().to_vec(),
            consumed: resp.len(),
        }),
        "{text}"
    );
    status
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let opts = input.u8();
    let raw = input.rest();
    if let Ok(kiln_http::ParsedResponse::Complete { consumed, body, .. }) =
        kiln_http::parse_response(raw, 1024, opts & 4 != 0)
    {
        assert!(consumed <= raw.len() && body.len() <= 1024);
    }
    let mut store = MmdsStore::new(4096);
    store
        .put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1", "n": 1}}}))
        .unwrap();
    let v2 = opts & 1 == 1;
    store.configure(
        if v2 { MmdsVersion::V2 } else { MmdsVersion::V1 },
        opts & 2 != 0,
    );
    let request = match parse_request(raw, 1024) {
        Ok(Parsed::Complete { request, .. }) => request,
        Ok(Parsed::Incomplete { .. }) => return,
        Err(e) => {
            check(&http::respond_malformed(e.status(), &e.to_string()));
            return;
        }
    };
    let status = check(&http::respond(&mut store, &request, !request.keep_alive));
    kiln_fuzz::debug(|| format!("{} {} -> {status}", request.method.as_str(), request.path));
    if request.method != kiln_http::Method::Get || !request.path.starts_with('/') {
        return;
    }
    let has_token = ["X-metadata-token", "X-aws-ec2-metadata-token"]
        .iter()
        .any(|h| request.header(h).is_some());
    if v2 && !has_token {
        assert_eq!(status, 401);
    }
    if !v2 {
        assert_ne!(status, 401);
    }
    if v2 && !has_token {
        let token = store.issue_token(60).expect("a token");
        let mut with = request.clone();
        with.headers.push(("X-metadata-token".into(), token));
        assert_ne!(check(&http::respond(&mut store, &with, false)), 401);
    }
});
