//! lambda-bootstrap: a custom Lambda runtime (`provided.al2023`), as one is written for AWS
//! Lambda: it loops on Lambda's Runtime API at `$AWS_LAMBDA_RUNTIME_API`
//! (`GET /2018-06-01/runtime/invocation/next`, then `POST .../{id}/response` or
//! `.../{id}/error`), with nothing Kiln-specific.
//!
//! The function: an event `E` (JSON) is answered with `{"echo":E,"request_id":ID,
//! "function_arn":ARN,"greeting":$GREETING}`; an event `{"fail":"why"}` with the error
//! `{"errorMessage":"why","errorType":"BootstrapError"}`; `{"exit":N}` ends the runtime with
//! exit status N (Lambda reports `Runtime.ExitError` and starts it again). Each invocation
//! logs one line on stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`).
fn call(
    api: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(api)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The string value of `"key":"..."` in a flat JSON object (enough for this example's events).
fn string_field<'a>(event: &'a str, key: &str) -> Option<&'a str> {
    let at = event.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = event[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// The number value of `"key":N`.
fn number_field(event: &str, key: &str) -> Option<u8> {
    let at = event.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = event[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn main() -> ExitCode {
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        eprintln!(
            "lambda-bootstrap: AWS_LAMBDA_RUNTIME_API is not set: run me as a Lambda runtime"
        );
        return ExitCode::from(2);
    };
    let greeting = std::env::var("GREETING").unwrap_or_default();
    loop {
        let next = match call(&api, "GET", "/2018-06-01/runtime/invocation/next", &[], b"") {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                eprintln!("lambda-bootstrap: /next answered {}", a.status);
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("lambda-bootstrap: /next: {e}");
                return ExitCode::from(1);
            }
        };
        let id = next
            .header("lambda-runtime-aws-request-id")
            .unwrap_or("")
            .to_string();
        let arn = next
            .header("lambda-runtime-invoked-function-arn")
            .unwrap_or("")
            .to_string();
        let event = String::from_utf8_lossy(&next.body).into_owned();
        eprintln!(
            "lambda-bootstrap: invocation {id}: {} bytes",
            next.body.len()
        );
        if let Some(code) = number_field(&event, "exit") {
            eprintln!("lambda-bootstrap: exiting with status {code} as asked");
            return ExitCode::from(code);
        }
        let (path, body, extra) = match string_field(&event, "fail") {
            Some(why) => (
                format!("/2018-06-01/runtime/invocation/{id}/error"),
                format!(
                    "{{\"errorMessage\":{},\"errorType\":\"BootstrapError\"}}",
                    quote(why)
                ),
                vec![("Lambda-Runtime-Function-Error-Type", "BootstrapError")],
            ),
            None => (
                format!("/2018-06-01/runtime/invocation/{id}/response"),
                format!(
                    "{{\"echo\":{},\"request_id\":{},\"function_arn\":{},\"greeting\":{}}}",
                    event.trim(),
                    quote(&id),
                    quote(&arn),
                    quote(&greeting)
                ),
                Vec::new(),
            ),
        };
        match call(&api, "POST", &path, &extra, body.as_bytes()) {
            Ok(a) if a.status == 202 => {}
            Ok(a) => eprintln!(
                "lambda-bootstrap: {path} answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            ),
            Err(e) => {
                eprintln!("lambda-bootstrap: {path}: {e}");
                return ExitCode::from(1);
            }
        }
    }
}
