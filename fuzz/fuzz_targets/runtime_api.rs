//! Lambda's Runtime API as kiln-init serves it in a Linux guest
//! (`guest/init/src/lambda/api.rs`), to the function's runtime, which the tenant wrote: one
//! connection (`api::connection`: the request buffer, `kiln_http::parse_request` with the
//! 6 MiB limit, keep-alive, `Expect: 100-continue`) routed against the hand-off with the
//! agent (`lambda::exchange::Exchange`): `GET invocation/next`, `POST invocation/{id}/
//! response` and `/error` (with `Lambda-Runtime-Function-Error-Type`), `POST init/error`,
//! a response over the limit, anything else.
//!
//! Input: byte 0: bits 0-6 seed the split of the rest into reads, bit 7 starts the runtime
//! in the middle of an invocation (`req-0` taken, not answered); the rest is what the
//! runtime sends. An invocation (`req-1`) waits for `/next` (so `/next` never blocks: it
//! takes it, or is refused while one is in progress).
//!
//! Checks: every answer is an HTTP/1.1 response (error bodies Lambda's JSON); `/next` hands
//! out the waiting invocation with its request id and event; an outcome is recorded only
//! for the invocation the runtime holds, at most once, and only a `202` accepted it.
#![no_main]

use kiln_fuzz::http::{check_answers, chunks};
use kiln_init::lambda::api::connection;
use kiln_init::lambda::exchange::{Exchange, Next, Outcome};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

/// The runtime's connection: reads hand out the chunks in turn, then end of file.
struct Runtime<'a> {
    chunks: Vec<&'a [u8]>,
    next: usize,
    written: Vec<u8>,
}

impl Read for Runtime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(chunk) = self.chunks.get_mut(self.next) else {
            return Ok(0);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        *chunk = &chunk[n..];
        if chunk.is_empty() {
            self.next += 1;
        }
        Ok(n)
    }
}

impl Write for Runtime<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let exchange = Exchange::default();
    {
        let mut st = exchange.lock();
        st.pending = Some(Next {
            request_id: "req-1".into(),
            event: br#"{"key":"value"}"#.to_vec(),
            deadline_ms: 1_714_564_800_000,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
            trace_id: Some("Root=1-5759e988-bd862e3fe1be46a994272793".into()),
            client_context: None,
            cognito_identity: None,
        });
        if knob & 0x80 != 0 {
            st.current = Some("req-0".into());
            st.ready = true;
        }
    }
    let mut runtime = Runtime {
        chunks: chunks(stream, knob | 0x80),
        next: 0,
        written: Vec::new(),
    };
    connection(&mut runtime, &exchange);

    let answers = check_answers(&runtime.written);
    let st = exchange.lock();
    kiln_fuzz::debug(|| {
        format!(
            "{} answers; current {:?}, outcome {:?}, init error {:?}",
            answers.len(),
            st.current,
            st.outcome,
            st.init_error
        )
    });
    for a in &answers {
        if a.header("lambda-runtime-aws-request-id").is_some() {
            assert_eq!(a.status, 200);
            assert_eq!(a.header("lambda-runtime-aws-request-id"), Some("req-1"));
            assert_eq!(a.body, br#"{"key":"value"}"#);
            assert_eq!(
                a.header("lambda-runtime-deadline-ms"),
                Some("1714564800000")
            );
        }
    }
    let handed_out = answers
        .iter()
        .filter(|a| a.header("lambda-runtime-aws-request-id").is_some())
        .count();
    assert!(
        handed_out <= 1,
        "one invocation handed out {handed_out} times"
    );
    if let Some((id, outcome)) = &st.outcome {
        assert_eq!(st.current.as_ref(), Some(id), "an outcome for {id:?}");
        let accepted = answers.iter().any(|a| a.status == 202);
        let too_large = matches!(outcome, Outcome::TooLarge { .. });
        assert!(
            accepted || too_large,
            "an outcome without a 202: {outcome:?}"
        );
    }
});
