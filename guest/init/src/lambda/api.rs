//! Lambda's Runtime API (version 2018-06-01), as the runtime sees it on
//! `AWS_LAMBDA_RUNTIME_API`: HTTP/1.1 through the project's parser (`kiln_http`), one thread
//! per connection (at most [`MAX_CONNECTIONS`]), keep-alive and `Expect: 100-continue`.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /2018-06-01/runtime/invocation/next` | blocks until an invocation; `200`, the event, `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`, `-Trace-Id`, `-Client-Context`, `-Cognito-Identity` |
//! | `POST /2018-06-01/runtime/invocation/{id}/response` | `202 {"status":"OK"}`; over 6 MiB: `413` and the invocation fails (`Function.ResponseSizeTooLarge`) |
//! | `POST /2018-06-01/runtime/invocation/{id}/error` | `202`; the body (an error object) and `Lambda-Runtime-Function-Error-Type` are the invocation's error |
//! | `POST /2018-06-01/runtime/init/error` | `202`; the next (or current) invocation fails with it |
//!
//! A call for another request id than the one in progress is `400 InvalidRequestID`; one that
//! does not fit the invocation's state (a second answer, `/next` before answering) is `403
//! InvalidStateTransition`; other paths are `404`. Errors are `{"errorMessage",
//! "errorType"}`. The extensions and telemetry APIs are not served.

use super::exchange::{Exchange, Next, Outcome, Refusal};
use kiln_http::{parse_request, HttpError, Method, Parsed, Request, CONTINUE};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest response or error a runtime may post: Lambda's 6 MiB.
pub const MAX_PAYLOAD: usize = kiln_protocol::DEFAULT_MAX_PAYLOAD as usize;
/// Most connections at once (a runtime uses one or two).
pub const MAX_CONNECTIONS: usize = 16;
const PREFIX: &str = "/2018-06-01/runtime/";

/// Serves `listener` in a thread of its own, for the life of the process.
pub fn start(listener: TcpListener, exchange: Arc<Exchange>) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("runtime-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    let body = error_body("TooManyConnections", "too many connections");
                    let _ = stream.write_all(&answer(503, &[], Some(&body), true));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                active.fetch_add(1, Ordering::AcqRel);
                let (x, a) = (exchange.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("runtime-conn".into())
                    .spawn(move || {
                        connection(stream, &x);
                        a.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(())
}

/// Serves one connection to its end: requests parsed, routed against `exchange`, answered
/// (the `runtime_api` fuzz target drives it with bytes in memory).
#[doc(hidden)]
pub fn connection<S: Read + Write>(mut stream: S, exchange: &Exchange) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent_continue = false;
    loop {
        match parse_request(&buf, MAX_PAYLOAD) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed.min(buf.len()));
                sent_continue = false;
                let close = !request.keep_alive;
                let out = route(&request, exchange, close);
                if stream.write_all(&out).is_err() || close {
                    return;
                }
                continue;
            }
            Ok(Parsed::Incomplete { send_continue }) => {
                if send_continue && !sent_continue {
                    if stream.write_all(CONTINUE).is_err() {
                        return;
                    }
                    sent_continue = true;
                }
            }
            Err(e) => {
                let _ = stream.write_all(&refused(&e, exchange));
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

/// The answer to a request the HTTP layer refused. A response over the limit fails the
/// invocation in progress.
fn refused(e: &HttpError, exchange: &Exchange) -> Vec<u8> {
    if let HttpError::PayloadTooLarge { len, path, .. } = e {
        if let Some(id) = answer_path(path).map(|(id, _)| id) {
            let _ = exchange.answer(id, Outcome::TooLarge { len: *len });
        }
        let body = error_body(
            "RequestEntityTooLarge",
            &format!("Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes)."),
        );
        return answer(413, &[], Some(&body), true);
    }
    let body = error_body("InvalidRequest", &e.to_string());
    answer(e.status(), &[], Some(&body), true)
}

/// `invocation/{id}/response` or `invocation/{id}/error`: the id and the last segment.
fn answer_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?.strip_prefix("invocation/")?;
    let (id, what) = rest.split_once('/')?;
    (!id.is_empty() && matches!(what, "response" | "error")).then_some((id, what))
}

fn route(req: &Request, exchange: &Exchange, close: bool) -> Vec<u8> {
    let post = matches!(&req.method, Method::Other(m) if m == "POST");
    let body = req.body.clone().unwrap_or_default();
    let error_type = req
        .header("lambda-runtime-function-error-type")
        .map(str::to_string);
    if req.path == format!("{PREFIX}invocation/next") && req.method == Method::Get {
        return match exchange.next() {
            Ok(next) => next_answer(&next, close),
            Err(r) => refusal(&r, close),
        };
    }
    if req.path == format!("{PREFIX}init/error") && post {
        exchange.init_error(error_type, body);
        return accepted(close);
    }
    if let (Some((id, what)), true) = (answer_path(&req.path), post) {
        let outcome = match what {
            "response" => Outcome::Response(body),
            _ => Outcome::Error { body, error_type },
        };
        return match exchange.answer(id, outcome) {
            Ok(()) => accepted(close),
            Err(r) => refusal(&r, close),
        };
    }
    let body = error_body(
        "NotFound",
        &format!(
            "{} {} is not part of the Runtime API Kiln serves (2018-06-01: invocation/next, invocation/ID/response, invocation/ID/error, init/error)",
            req.method.as_str(),
            req.path
        ),
    );
    answer(404, &[], Some(&body), close)
}

fn next_answer(next: &Next, close: bool) -> Vec<u8> {
    let deadline = next.deadline_ms.to_string();
    let mut headers = vec![
        ("Lambda-Runtime-Aws-Request-Id", next.request_id.as_str()),
        ("Lambda-Runtime-Deadline-Ms", deadline.as_str()),
        (
            "Lambda-Runtime-Invoked-Function-Arn",
            next.function_arn.as_str(),
        ),
    ];
    for (name, value) in [
        ("Lambda-Runtime-Trace-Id", &next.trace_id),
        ("Lambda-Runtime-Client-Context", &next.client_context),
        ("Lambda-Runtime-Cognito-Identity", &next.cognito_identity),
    ] {
        if let Some(v) = value {
            headers.push((name, v.as_str()));
        }
    }
    answer(200, &headers, Some(&next.event), close)
}

fn accepted(close: bool) -> Vec<u8> {
    answer(202, &[], Some(br#"{"status":"OK"}"#), close)
}

fn refusal(r: &Refusal, close: bool) -> Vec<u8> {
    match r {
        Refusal::UnknownRequest => answer(
            400,
            &[],
            Some(&error_body("InvalidRequestID", "Invalid request ID")),
            close,
        ),
        Refusal::InvalidState(why) => answer(
            403,
            &[],
            Some(&error_body("InvalidStateTransition", why)),
            close,
        ),
    }
}

/// `{"errorMessage": ..., "errorType": ...}`.
pub fn error_body(error_type: &str, message: &str) -> Vec<u8> {
    serde_json::json!({ "errorMessage": message, "errorType": error_type })
        .to_string()
        .into_bytes()
}

fn answer(status: u16, headers: &[(&str, &str)], body: Option<&[u8]>, close: bool) -> Vec<u8> {
    kiln_http::encode_response(
        status,
        headers,
        body.map(|b| ("application/json", b)),
        close,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_paths_name_the_request() {
        assert_eq!(
            answer_path("/2018-06-01/runtime/invocation/abc-1/response"),
            Some(("abc-1", "response"))
        );
        assert_eq!(
            answer_path("/2018-06-01/runtime/invocation/abc-1/error"),
            Some(("abc-1", "error"))
        );
        for other in [
            "/2018-06-01/runtime/invocation/next",
            "/2018-06-01/runtime/invocation//response",
            "/2018-06-01/runtime/invocation/a/b/response",
            "/2018-06-01/runtime/init/error",
        ] {
            assert_eq!(answer_path(other), None, "{other}");
        }
    }
}
