//! Lambda's Invoke API on `kiln serve`, driven by real AWS clients from PyPI (pinned in
//! tests/python/requirements.txt, installed by scripts/python-clients.sh): the AWS SDK for
//! Python (boto3, through tests/python/lambda_client.py) and the AWS CLI (v1). Through the
//! real jailer and VMM with the example functions (examples/functions): RequestResponse,
//! Event, DryRun, Tail logs, function errors (crash, handler error, timeout), throttling,
//! unknown functions, oversized payloads, and SigV4 verification. Needs root, /dev/kvm, and
//! the jailer and vmm binaries.

mod common;

use common::{request, wait_until, Env, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "AKIDKILNTEST";
const SECRET: &str = "kiln-test-secret";
const ARN_PREFIX: &str = "arn:aws:lambda:us-east-1:000000000000:function:";

/// A credentials file for the worker (AWS's format), in `dir`.
fn credentials(dir: &Path) -> PathBuf {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        format!("[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    path
}

/// Runs `calls` through boto3 against `endpoint`; returns the results (and prints the
/// client's versions once).
fn boto3(endpoint: &str, calls: &Value) -> Vec<Value> {
    use std::io::Write;
    let venv = kiln_tests::python::require_clients();
    let mut child = Command::new(venv.join("bin/python"))
        .arg(kiln_tests::python::dir().join("lambda_client.py"))
        .arg(endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(calls.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lambda_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from lambda_client.py");
    eprintln!(
        "client: boto3 {} (botocore {})",
        v["boto3"].as_str().unwrap_or("?"),
        v["botocore"].as_str().unwrap_or("?")
    );
    v["results"].as_array().cloned().unwrap_or_default()
}

fn one(endpoint: &str, call: Value) -> Value {
    boto3(endpoint, &json!([call])).remove(0)
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<usize> = s.split('-').map(str::len).collect();
    parts == [8, 4, 4, 4, 12] && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

/// The error boto3 raised (a ClientError), checked against Lambda's code and status.
fn client_error(r: &Value, code: &str, status: u64) -> Value {
    let e = r["error"].clone();
    assert_eq!(e["Code"], code, "{r}");
    assert_eq!(e["HTTPStatusCode"], status, "{r}");
    assert!(is_uuid(e["RequestId"].as_str().unwrap_or("")), "{r}");
    e
}

/// The ids of every VM the server has (for the leftover check).
fn vm_ids(server: &Server) -> Vec<String> {
    server
        .instances()
        .into_iter()
        .filter_map(|(_, i)| i["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn boto3_gets_lambdas_answers() {
    let env = Env::new("lam");
    let creds = credentials(env.root.path());
    let server = Server::start(
        &env,
        &[
            "--credentials",
            creds.to_str().unwrap(),
            "--queue-timeout-ms",
            "0",
            "--idle-timeout-ms",
            "0",
        ],
    );
    let endpoint = server.endpoint();
    let mut seen = Vec::new();

    // RequestResponse, with the log's tail.
    let r = one(
        &endpoint,
        json!({"function": "echo", "payload": "{\"hello\":\"world\"}", "tail": true}),
    );
    assert_eq!(r["StatusCode"], 200, "{r}");
    assert_eq!(r["Payload"], r#"{"echo":{"hello":"world"}}"#, "{r}");
    assert_eq!(r["ExecutedVersion"], "$LATEST", "{r}");
    assert!(r["FunctionError"].is_null(), "{r}");
    let id = r["RequestId"].as_str().unwrap().to_string();
    assert!(is_uuid(&id), "{r}");
    let log = r["LogResult"].as_str().unwrap_or_default();
    assert!(
        log.starts_with(&format!("START RequestId: {id} Version: $LATEST\n")),
        "{log}"
    );
    assert!(log.contains(&format!("\nEND RequestId: {id}\n")), "{log}");
    assert!(
        log.contains(&format!("\nREPORT RequestId: {id}\tDuration: ")),
        "{log}"
    );
    assert!(log.contains("\tMemory Size: 16 MB\t"), "{log}");
    assert!(log.contains("\tInit Duration: "), "a cold start: {log}");

    // By ARN and by qualifier; a warm VM; a fresh request id each time.
    let results = boto3(
        &endpoint,
        &json!([
            {"function": format!("{ARN_PREFIX}echo"), "payload": "[1]", "qualifier": "$LATEST"},
            {"function": "echo:$LATEST", "payload": "2"},
            {"function": "echo", "qualifier": "1", "payload": "3"},
            {"function": "echo", "tail": true},
        ]),
    );
    assert_eq!(results[0]["Payload"], r#"{"echo":[1]}"#, "{}", results[0]);
    assert_eq!(results[1]["Payload"], r#"{"echo":2}"#, "{}", results[1]);
    assert_ne!(results[0]["RequestId"], results[1]["RequestId"]);
    let e = client_error(&results[2], "ResourceNotFoundException", 404);
    assert_eq!(
        e["Message"],
        format!("Function not found: {ARN_PREFIX}echo:1")
    );
    // No payload: the event is {} (as Lambda's).
    assert_eq!(results[3]["Payload"], r#"{"echo":{}}"#, "{}", results[3]);
    let warm = results[3]["LogResult"].as_str().unwrap_or_default();
    assert!(!warm.contains("Init Duration"), "a warm invocation: {warm}");

    // Unknown function, not JSON, too large, bad invocation type.
    let big = format!("\"{}\"", "x".repeat(6 * 1024 * 1024));
    let results = boto3(
        &endpoint,
        &json!([
            {"function": "nope", "payload": "{}"},
            {"function": "echo", "payload": "not json"},
            {"function": "echo", "payload": big},
            {"function": "echo", "type": "Sometimes"},
        ]),
    );
    let e = client_error(&results[0], "ResourceNotFoundException", 404);
    assert_eq!(
        e["Message"],
        format!("Function not found: {ARN_PREFIX}nope")
    );
    assert_eq!(e["Type"], "User");
    let e = client_error(&results[1], "InvalidRequestContentException", 400);
    assert!(
        e["Message"]
            .as_str()
            .unwrap()
            .starts_with("Could not parse request body into json"),
        "{e}"
    );
    let e = client_error(&results[2], "RequestTooLargeException", 413);
    assert_eq!(
        e["Message"],
        "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    );
    client_error(&results[3], "ValidationException", 400);

    // Function errors: a handler error, a crash, a timeout; and throttling (spin has a
    // concurrency of 1 and the worker does not queue: --queue-timeout-ms 0).
    let results = boto3(
        &endpoint,
        &json!([
            {"function": "hash", "payload": "{\"rounds\":0}"},
            {"function": "panic", "payload": "{}", "tail": true},
            {"parallel": [
                {"function": "spin", "payload": "{}"},
                {"function": "spin", "payload": "{}"},
            ]},
        ]),
    );
    let r = &results[0];
    assert_eq!(
        (r["StatusCode"].clone(), r["FunctionError"].clone()),
        (json!(200), json!("Unhandled")),
        "{r}"
    );
    let body: Value = serde_json::from_str(r["Payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["errorType"], "HandlerError", "{r}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("must be 1..=100000000, not 0"),
        "{r}"
    );
    let r = &results[1];
    assert_eq!(r["FunctionError"], "Unhandled", "{r}");
    let body: Value = serde_json::from_str(r["Payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["errorType"], "Runtime.ExitError", "{r}");
    let id = r["RequestId"].as_str().unwrap();
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with(&format!("RequestId: {id} Error: the function panicked")),
        "{r}"
    );
    assert!(
        r["LogResult"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("END RequestId: {id}")),
        "{r}"
    );
    let spins = results[2].as_array().unwrap();
    let throttled: Vec<&Value> = spins.iter().filter(|r| r["error"].is_object()).collect();
    let timed_out: Vec<&Value> = spins
        .iter()
        .filter(|r| r["FunctionError"] == "Unhandled")
        .collect();
    assert_eq!((throttled.len(), timed_out.len()), (1, 1), "{spins:?}");
    let e = client_error(throttled[0], "TooManyRequestsException", 429);
    assert_eq!(
        e["Reason"], "ReservedFunctionConcurrentInvocationLimitExceeded",
        "{e}"
    );
    let body: Value = serde_json::from_str(timed_out[0]["Payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["errorType"], "Sandbox.Timedout", "{body}");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Task timed out after 0.50 seconds"),
        "{body}"
    );

    // DryRun: 204, nothing started; Event: 202, run in the background.
    let results = boto3(
        &endpoint,
        &json!([
            {"function": "counter", "type": "DryRun"},
            {"function": "nope", "type": "DryRun"},
            {"function": "counter", "type": "Event", "payload": "{\"n\":1}"},
        ]),
    );
    assert_eq!(results[0]["StatusCode"], 204, "{}", results[0]);
    client_error(&results[1], "ResourceNotFoundException", 404);
    let r = &results[2];
    assert_eq!(r["StatusCode"], 202, "{r}");
    assert_eq!(r["Payload"], "", "{r}");
    let event_id = r["RequestId"].as_str().unwrap().to_string();
    wait_until("the event to run", Duration::from_secs(60), || {
        server
            .log()
            .contains(&format!("[event {event_id}] counter: done"))
    });
    // The event ran on counter's VM: a synchronous call after it is its second.
    let r = one(&endpoint, json!({"function": "counter", "payload": "{}"}));
    let body: Value = serde_json::from_str(r["Payload"].as_str().unwrap()).unwrap();
    assert_eq!(body["invocations"], 2, "{r}");

    // Signatures: a wrong secret, an unknown key.
    let results = boto3(
        &endpoint,
        &json!([
            {"function": "echo", "payload": "{}", "secret": "wrong"},
            {"function": "echo", "payload": "{}", "key": "AKIDOTHER"},
            {"function": "echo", "payload": "{}", "unsigned": true},
        ]),
    );
    client_error(&results[0], "InvalidSignatureException", 403);
    client_error(&results[1], "UnrecognizedClientException", 403);
    client_error(&results[2], "MissingAuthenticationTokenException", 403);

    seen.extend(vm_ids(&server));
    let log = server.stop();
    assert!(
        log.contains("signatures verified against 1 access key"),
        "{log}"
    );
    env.assert_nothing_left(&seen);
}

/// The AWS CLI's exit code, stdout and stderr.
fn aws(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let venv = kiln_tests::python::require_clients();
    let out = Command::new(venv.join("bin/aws"))
        .args([
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
            "lambda",
            "invoke",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDANY")
        .env("AWS_SECRET_ACCESS_KEY", "any")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run aws");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_aws_cli_invokes_functions_unsigned_requests_are_accepted_with_a_warning() {
    let env = Env::new("lcli");
    // No --credentials: signatures are parsed, not verified.
    let server = Server::start(&env, &[]);
    let endpoint = server.endpoint();
    let venv = kiln_tests::python::require_clients();
    eprintln!(
        "client: aws-cli {}",
        kiln_tests::python::installed_version(&venv, "awscli").unwrap_or_default()
    );
    let out = env.root.join("out.json");
    let (code, stdout, stderr) = aws(
        &endpoint,
        &[
            "--function-name",
            "echo",
            "--payload",
            "{\"a\":1}",
            "--log-type",
            "Tail",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("aws prints JSON");
    assert_eq!(v["StatusCode"], 200, "{v}");
    assert_eq!(v["ExecutedVersion"], "$LATEST", "{v}");
    assert!(
        v["LogResult"].as_str().is_some_and(|l| !l.is_empty()),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        r#"{"echo":{"a":1}}"#
    );

    let (code, stdout, stderr) = aws(
        &endpoint,
        &[
            "--function-name",
            "counter",
            "--invocation-type",
            "Event",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["StatusCode"], 202, "{v}");

    let (code, _, stderr) = aws(
        &endpoint,
        &["--function-name", "nope", out.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("(ResourceNotFoundException)")
            && stderr.contains(&format!("Function not found: {ARN_PREFIX}nope")),
        "{stderr}"
    );

    // boto3 without a signature at all is accepted too.
    let r = one(
        &endpoint,
        json!({"function": "echo", "payload": "7", "unsigned": true}),
    );
    assert_eq!(r["Payload"], r#"{"echo":7}"#, "{r}");

    // The same API on the Unix socket, and Kiln's own API on TCP.
    let r = request(
        &server.socket,
        "POST",
        "/2015-03-31/functions/echo/invocations",
        b"[true]",
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body, br#"{"echo":[true]}"#);
    assert!(r.header("x-amzn-RequestId").is_some_and(is_uuid), "{r}");
    assert_eq!(r.header("X-Amz-Executed-Version"), Some("$LATEST"));
    let r = request(
        &server.socket,
        "GET",
        "/2015-03-31/functions/echo/invocations",
        b"",
    );
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("UnknownOperationException")
    );
    let kiln_over_tcp = http_over_tcp(&server.tcp_addr(), "GET /functions");
    assert!(
        kiln_over_tcp.starts_with("HTTP/1.1 200 OK\r\n") && kiln_over_tcp.contains("\"echo\""),
        "{kiln_over_tcp}"
    );

    let seen = vm_ids(&server);
    let log = server.stop();
    assert!(
        log.contains("signatures are not verified (no --credentials)"),
        "{log}"
    );
    assert!(
        log.contains("accepting requests signed with access key \"AKIDANY\"")
            || log.contains("accepting requests signed with no signature"),
        "{log}"
    );
    env.assert_nothing_left(&seen);
}

fn http_over_tcp(addr: &std::net::SocketAddr, request_line: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
