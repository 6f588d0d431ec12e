//! The context of one invocation, as Lambda gives it to a function: its request id, the ARN
//! it was invoked by, and the optional trace id, client context and Cognito identity. Every
//! invocation has one (the Lambda Invoke API fills it from the request; Kiln's own endpoint
//! and `kiln invoke` make a fresh one); a Linux guest gets it in a `Context` frame
//! ([`InvocationContext::payload`]), a function image never sees it.

use kiln_protocol::{context as key, pairs};
use std::io::Read;
use std::time::Duration;

/// Where functions are said to live: the region and account of their ARNs
/// (`arn:aws:lambda:<region>:<account>:function:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub region: String,
    pub account_id: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

impl Identity {
    /// The unqualified ARN of function `name`.
    pub fn function_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{name}",
            self.region, self.account_id
        )
    }
}

/// One invocation's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationContext {
    pub request_id: String,
    pub function_arn: String,
    pub trace_id: Option<String>,
    /// JSON (decoded from `X-Amz-Client-Context`).
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

impl InvocationContext {
    /// A context with a fresh request id for function `name`.
    pub fn new(identity: &Identity, name: &str) -> InvocationContext {
        InvocationContext {
            request_id: request_id(),
            function_arn: identity.function_arn(name),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }

    /// The payload of the `Context` frame, with `remaining` as the time left. Values that
    /// cannot be carried (a NUL inside) are left out.
    pub fn payload(&self, remaining: Duration) -> Vec<u8> {
        let remaining = remaining.as_millis().to_string();
        let fields = [
            (key::REQUEST_ID, Some(self.request_id.as_str())),
            (key::REMAINING_MS, Some(remaining.as_str())),
            (key::FUNCTION_ARN, Some(self.function_arn.as_str())),
            (key::TRACE_ID, self.trace_id.as_deref()),
            (key::CLIENT_CONTEXT, self.client_context.as_deref()),
            (key::COGNITO_IDENTITY, self.cognito_identity.as_deref()),
        ];
        let mut out = Vec::new();
        for (k, v) in fields {
            if let Some(v) = v {
                let _ = pairs::put(&mut out, k, v);
            }
        }
        out
    }
}

/// A fresh request id: a random (version 4) UUID, as Lambda's.
pub fn request_id() -> String {
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom: std's randomly keyed hasher over a counter and the time still
        // makes ids unique within the worker.
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, chunk) in b.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(n);
            h.write_u128(now);
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_fresh_version_4_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{a}"
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn the_context_payload_carries_what_is_set() {
        let id = Identity::default();
        let mut ctx = InvocationContext::new(&id, "echo");
        assert_eq!(
            ctx.function_arn,
            "arn:aws:lambda:us-east-1:000000000000:function:echo"
        );
        ctx.client_context = Some("{\"custom\":{}}".into());
        let p = ctx.payload(Duration::from_millis(2500));
        assert_eq!(
            pairs::get(&p, key::REQUEST_ID),
            Some(ctx.request_id.as_str())
        );
        assert_eq!(pairs::get(&p, key::REMAINING_MS), Some("2500"));
        assert_eq!(
            pairs::get(&p, key::FUNCTION_ARN),
            Some(ctx.function_arn.as_str())
        );
        assert_eq!(pairs::get(&p, key::CLIENT_CONTEXT), Some("{\"custom\":{}}"));
        assert_eq!(pairs::get(&p, key::TRACE_ID), None);
    }
}
