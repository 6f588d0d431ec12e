//! The guest's side of MMDS over HTTP/1.1: one request (parsed by `kiln-http`, the
//! project's one HTTP parser) in, one response out.
//!
//! - `GET <path>`: the value at the path, as JSON when `Accept` names `application/json`,
//!   else in IMDS text form (always IMDS with `imds_compat`). V2 requires a valid session
//!   token (`X-metadata-token` or `X-aws-ec2-metadata-token`; 401 without); V1 serves
//!   without, and counts missing and invalid tokens.
//! - `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (or
//!   `X-aws-ec2-metadata-token-ttl-seconds`), 1 to 21600: a session token, the TTL header
//!   echoed. Refused when it carries `X-Forwarded-For` (a request relayed from elsewhere).
//! - Anything else: 405 with `Allow: GET, PUT`.
//!
//! Errors are plain text. Statuses as Firecracker's: 400, 401, 404, 405, 501 (a value with
//! no IMDS form).

use super::store::{MmdsStore, MmdsVersion, OutputFormat, StoreError};
use crate::metrics::METRICS;
use kiln_http::{encode_response, Method, Request};

/// The path of V2's token request.
pub const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["X-metadata-token", "X-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds",
];
const TEXT: &str = "text/plain";
const JSON: &str = "application/json";

/// The response to `req`, encoded; `close` adds `Connection: close`.
pub fn respond(store: &mut MmdsStore, req: &Request, close: bool) -> Vec<u8> {
    METRICS.mmds.rx_count.inc();
    let out = answer(store, req);
    METRICS.mmds.tx_count.inc();
    let headers: Vec<(&str, &str)> = out.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    encode_response(
        out.status,
        &headers,
        Some((out.content_type, out.body.as_bytes())),
        close,
    )
}

/// The response to bytes that are not a request `kiln-http` accepts (the connection is
/// closed after it).
pub fn respond_malformed(status: u16, message: &str) -> Vec<u8> {
    METRICS.mmds.tx_count.inc();
    encode_response(status, &[], Some((TEXT, message.as_bytes())), true)
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

fn text(status: u16, body: String) -> Answer {
    Answer {
        status,
        content_type: TEXT,
        body,
        headers: Vec::new(),
    }
}

/// `//` collapsed to `/`, as a path to a value.
fn clean_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn first_header<'r>(req: &'r Request, names: &[&'static str]) -> Option<(&'static str, &'r str)> {
    names.iter().find_map(|n| req.header(n).map(|v| (*n, v)))
}

fn answer(store: &mut MmdsStore, req: &Request) -> Answer {
    if !req.path.starts_with('/') {
        return text(
            400,
            format!(
                "invalid request target {:?}: use an absolute path",
                req.path
            ),
        );
    }
    let path = clean_path(&req.path);
    match req.method {
        Method::Get => get(store, req, &path),
        Method::Put => put_token(store, req, &path),
        _ => Answer {
            headers: vec![("Allow", "GET, PUT".to_string())],
            ..text(
                405,
                format!(
                    "method {} is not allowed (allowed: GET, PUT)",
                    req.method.as_str()
                ),
            )
        },
    }
}

fn get(store: &MmdsStore, req: &Request, path: &str) -> Answer {
    let token = first_header(req, &TOKEN_HEADERS).map(|(_, v)| v);
    let valid = token.is_some_and(|t| store.is_valid_token(t));
    match (token, valid) {
        (None, _) => METRICS.mmds.rx_no_token.inc(),
        (Some(_), false) => METRICS.mmds.rx_invalid_token.inc(),
        (Some(_), true) => {}
    }
    if store.version() == MmdsVersion::V2 {
        match (token, valid) {
            (None, _) => {
                return text(
                    401,
                    "no session token: MMDS V2 needs the X-metadata-token header (PUT /latest/api/token first)".into(),
                )
            }
            (Some(_), false) => {
                return text(401, "the session token is invalid or has expired".into())
            }
            (Some(_), true) => {}
        }
    }
    let format = match req.header("Accept") {
        Some(a) if a.contains(JSON) => OutputFormat::Json,
        _ => OutputFormat::Imds,
    };
    match store.read(path, format) {
        Ok(body) => {
            let json = format == OutputFormat::Json && !store.imds_compat();
            Answer {
                content_type: if json { JSON } else { TEXT },
                ..text(200, body)
            }
        }
        Err(e @ StoreError::NotFound(_)) => text(404, e.to_string()),
        Err(e @ StoreError::NotImdsFormattable(_)) => text(501, e.to_string()),
        Err(e) => text(400, e.to_string()),
    }
}

fn put_token(store: &mut MmdsStore, req: &Request, path: &str) -> Answer {
    if req.header("X-Forwarded-For").is_some() {
        return text(
            400,
            "X-Forwarded-For: a token request must come from the guest itself".into(),
        );
    }
    if path != TOKEN_PATH {
        return text(
            404,
            format!("no such resource: {path} (PUT serves {TOKEN_PATH})"),
        );
    }
    let Some((name, value)) = first_header(req, &TTL_HEADERS) else {
        return text(
            400,
            "the token request needs the X-metadata-token-ttl-seconds header".into(),
        );
    };
    let Ok(ttl) = value.parse::<u64>() else {
        return text(400, format!("{name}: {value:?} is not a number of seconds"));
    };
    match store.issue_token(ttl) {
        Ok(token) => Answer {
            headers: vec![(name, ttl.to_string())],
            ..text(200, token)
        },
        Err(e) => text(400, e.to_string()),
    }
}

#[cfg(test)]
mod tests;
