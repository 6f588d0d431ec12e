//! The Lambda context of an invocation, as the host sends it in a `Context` frame before the
//! `Invoke` (keys in `kiln_protocol::context`). Unknown keys are ignored; a malformed payload
//! gives the fields read before the fault.

use kiln_protocol::{context as key, pairs};
use std::time::{Duration, Instant};

/// One invocation's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub request_id: Option<String>,
    /// The time left when the frame arrived.
    pub remaining: Option<Duration>,
    /// When the frame arrived (the deadline is `received + remaining`).
    pub received: Instant,
    pub function_arn: Option<String>,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

impl Context {
    /// A context with nothing in it, received now (an `Invoke` without a `Context`).
    pub fn empty() -> Context {
        Context {
            request_id: None,
            remaining: None,
            received: Instant::now(),
            function_arn: None,
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }

    /// Parses a `Context` payload, received now.
    pub fn from_payload(payload: &[u8]) -> Context {
        let mut c = Context::empty();
        for (k, v) in pairs::iter(payload).map_while(Result::ok) {
            let v = v.to_string();
            match k {
                key::REQUEST_ID => c.request_id = Some(v),
                key::REMAINING_MS => c.remaining = v.parse().ok().map(Duration::from_millis),
                key::FUNCTION_ARN => c.function_arn = Some(v),
                key::TRACE_ID => c.trace_id = Some(v),
                key::CLIENT_CONTEXT => c.client_context = Some(v),
                key::COGNITO_IDENTITY => c.cognito_identity = Some(v),
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_payload_is_read_and_unknown_keys_ignored() {
        let mut p = Vec::new();
        for (k, v) in [
            (key::REQUEST_ID, "r-1"),
            (key::REMAINING_MS, "2500"),
            ("future-key", "x"),
            (key::FUNCTION_ARN, "arn:aws:lambda:r:1:function:f"),
            (key::CLIENT_CONTEXT, "{}"),
        ] {
            pairs::put(&mut p, k, v).unwrap();
        }
        let c = Context::from_payload(&p);
        assert_eq!(c.request_id.as_deref(), Some("r-1"));
        assert_eq!(c.remaining, Some(Duration::from_millis(2500)));
        assert_eq!(
            c.function_arn.as_deref(),
            Some("arn:aws:lambda:r:1:function:f")
        );
        assert_eq!(c.client_context.as_deref(), Some("{}"));
        assert_eq!((c.trace_id, c.cognito_identity), (None, None));
        let broken = Context::from_payload(b"request-id\0r-2\0remaining-ms");
        assert_eq!(broken.request_id.as_deref(), Some("r-2"));
        assert_eq!(broken.remaining, None);
    }
}
