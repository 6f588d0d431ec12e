//! Kiln's invocation protocol: framed messages over one vsock stream between the host worker
//! and a function's guest (the no_std function runtime, or the Linux agent in `guest/init`).
//!
//! The guest opens the stream: it connects to the host (CID 2) on [`GUEST_CONNECT_PORT`] as
//! soon as it is up, which Kiln's VMM forwards to the Unix socket `<uds_path>_<port>` where
//! the worker already listens. The guest then sends [`Kind::Hello`]; the worker sends one
//! [`Kind::Invoke`] per event, and the guest answers each with [`Kind::Response`] or
//! [`Kind::Error`] carrying the same `id`. A warm VM keeps the stream (and the function's
//! state) between invocations.
//!
//! Every frame is a fixed 16-byte little-endian header followed by `len` payload bytes:
//!
//! ```text
//! offset 0  magic  u32  = MAGIC ("KLN1")
//! offset 4  kind   u8   (Kind)
//! offset 5  flags  u8   (0)
//! offset 6  rsvd   u16  (0)
//! offset 8  id     u32  invocation id, chosen by the worker, echoed by the guest
//! offset 12 len    u32  payload length, at most the receiver's limit
//! ```
//!
//! An [`Kind::Error`] payload is `code u16 LE` ([`ErrorCode`]) followed by a UTF-8 message.
//!
//! Linux guests (the agent in `guest/init`) also take a [`Kind::Context`] before an `Invoke`:
//! the invocation's Lambda context (request id, time left, ARN, ...) as [`pairs`], keys in
//! [`context`]. The same pair encoding carries a Lambda function's configuration from the
//! builder to the agent ([`lambda_config`]). Function images never get a `Context`.

#![no_std]

pub mod pairs;

/// Keys of a [`Kind::Context`] payload (all optional; unknown keys are ignored).
pub mod context {
    /// Lambda's request id of the invocation (`Lambda-Runtime-Aws-Request-Id`).
    pub const REQUEST_ID: &str = "request-id";
    /// Milliseconds left before the invocation times out, counted from when the worker sent
    /// the frame (the guest turns it into `Lambda-Runtime-Deadline-Ms` by its own clock).
    pub const REMAINING_MS: &str = "remaining-ms";
    /// The ARN the function was invoked by (`Lambda-Runtime-Invoked-Function-Arn`).
    pub const FUNCTION_ARN: &str = "function-arn";
    /// `Lambda-Runtime-Trace-Id`.
    pub const TRACE_ID: &str = "trace-id";
    /// The client context (JSON, already base64-decoded): `Lambda-Runtime-Client-Context`.
    pub const CLIENT_CONTEXT: &str = "client-context";
    /// `Lambda-Runtime-Cognito-Identity` (JSON).
    pub const COGNITO_IDENTITY: &str = "cognito-identity";
}

/// Keys of a Lambda function's configuration, which the builder writes as [`pairs`] into a
/// Linux function's initramfs ([`lambda_config::PATH`]) and the agent reads.
pub mod lambda_config {
    /// Where the configuration is in the guest; `kiln.lambda=` on the kernel command line.
    pub const PATH: &str = "/fn/lambda.conf";
    /// The function's name.
    pub const NAME: &str = "name";
    /// Lambda's runtime identifier (`provided.al2023`, `python3.12`, ...).
    pub const RUNTIME: &str = "runtime";
    /// Lambda's handler string (`_HANDLER`), possibly empty.
    pub const HANDLER: &str = "handler";
    /// The function's memory in MiB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub const MEMORY_MIB: &str = "memory-mib";
    /// The function's timeout in ms (the deadline when a `Context` names none).
    pub const TIMEOUT_MS: &str = "timeout-ms";
    /// One environment variable of the function, `NAME=VALUE` (repeated).
    pub const ENV: &str = "env";
}

/// The vsock port the guest connects to on the host.
pub const GUEST_CONNECT_PORT: u32 = 1024;
/// The host's vsock CID.
pub const HOST_CID: u64 = 2;
/// "KLN1", little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"KLN1");
/// Size of the frame header.
pub const HEADER_LEN: usize = 16;
/// Default limit on an event or a response payload: 6 MiB, as Lambda's synchronous payloads.
pub const DEFAULT_MAX_PAYLOAD: u32 = 6 * 1024 * 1024;

/// Declares a `#[repr($repr)]` enum whose discriminants are its values on the wire, and its
/// checked conversion `$from` from a raw value, from one list of variants.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, from $from:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// The variant whose wire value is `v`; `None` for any other value.
            pub fn $from(v: $repr) -> Option<$name> {
                match v {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// What a frame carries.
    pub enum Kind: u8, from from_u8 {
        /// Guest → host, once, first: the guest is ready. Payload: the function's name (UTF-8).
        Hello = 1,
        /// Host → guest: run the handler on the payload (the event).
        Invoke = 2,
        /// Guest → host: the handler's output for invocation `id`.
        Response = 3,
        /// Guest → host: invocation `id` failed; payload is `code u16` + UTF-8 message.
        Error = 4,
        /// Guest → host: a log line from the function (UTF-8), not tied to an answer.
        Log = 5,
        /// Host → Linux guest, right before the `Invoke` with the same id: the invocation's
        /// Lambda context, as [`pairs`] with the keys of [`context`].
        Context = 6,
    }
}

wire_enum! {
    /// Why an invocation failed, as the guest reports it.
    pub enum ErrorCode: u16, from from_u16 {
        /// The handler returned an error; the message is its text.
        Handler = 1,
        /// The handler panicked; the message is the panic location and text. The VM is not
        /// reused after this.
        Panic = 2,
        /// The event was larger than the guest accepts.
        EventTooLarge = 3,
        /// The guest could not allocate memory for the event or the response.
        OutOfMemory = 4,
        /// The frame was not understood (bad magic, kind or length).
        Protocol = 5,
        /// The function failed the way a Lambda function does: the message is a Lambda error
        /// object (JSON: `{"errorMessage", "errorType", ...}`), as its runtime posted it to the
        /// Runtime API, or as the agent made it for a runtime that exited, timed out or failed
        /// to initialise. The guest stays usable.
        Function = 6,
    }
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Handler => "handler_error",
            ErrorCode::Panic => "panic",
            ErrorCode::EventTooLarge => "event_too_large",
            ErrorCode::OutOfMemory => "out_of_memory",
            ErrorCode::Protocol => "protocol_error",
            ErrorCode::Function => "function_error",
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub id: u32,
    pub len: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic(u32),
    BadKind(u8),
    /// Flags or reserved bits set.
    Reserved,
    /// `len` is over the receiver's limit.
    TooLong {
        len: u32,
        max: u32,
    },
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeaderError::BadMagic(m) => write!(f, "bad frame magic {m:#010x}"),
            HeaderError::BadKind(k) => write!(f, "unknown frame kind {k}"),
            HeaderError::Reserved => write!(f, "reserved frame bits set"),
            HeaderError::TooLong { len, max } => {
                write!(f, "frame payload of {len} bytes is over the limit of {max}")
            }
        }
    }
}

impl Header {
    pub fn new(kind: Kind, id: u32, len: u32) -> Header {
        Header { kind, id, len }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[8..12].copy_from_slice(&self.id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and validates a header; `max_payload` is the receiver's limit.
    pub fn decode(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, HeaderError> {
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let kind = Kind::from_u8(b[4]).ok_or(HeaderError::BadKind(b[4]))?;
        if b[5] != 0 || b[6] != 0 || b[7] != 0 {
            return Err(HeaderError::Reserved);
        }
        let id = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if len > max_payload {
            return Err(HeaderError::TooLong {
                len,
                max: max_payload,
            });
        }
        Ok(Header { kind, id, len })
    }
}

/// Splits an [`Kind::Error`] payload into its code and message. Unknown codes and invalid
/// UTF-8 are reported as [`ErrorCode::Protocol`] / a placeholder, never a panic.
pub fn decode_error(payload: &[u8]) -> (ErrorCode, &str) {
    match payload {
        [lo, hi, rest @ ..] => (
            ErrorCode::from_u16(u16::from_le_bytes([*lo, *hi])).unwrap_or(ErrorCode::Protocol),
            core::str::from_utf8(rest).unwrap_or("<message is not UTF-8>"),
        ),
        _ => (ErrorCode::Protocol, "<error frame shorter than its code>"),
    }
}

/// The first two bytes of an [`Kind::Error`] payload.
pub fn error_code_bytes(code: ErrorCode) -> [u8; 2] {
    (code as u16).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header::new(Kind::Invoke, 7, 12);
        assert_eq!(Header::decode(&h.encode(), 100), Ok(h));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut b = Header::new(Kind::Invoke, 1, 10).encode();
        assert_eq!(
            Header::decode(&b, 9),
            Err(HeaderError::TooLong { len: 10, max: 9 })
        );
        b[4] = 99;
        assert_eq!(Header::decode(&b, 100), Err(HeaderError::BadKind(99)));
        b[4] = 2;
        b[6] = 1;
        assert_eq!(Header::decode(&b, 100), Err(HeaderError::Reserved));
        b[0] = 0;
        assert!(matches!(
            Header::decode(&b, 100),
            Err(HeaderError::BadMagic(_))
        ));
    }

    #[test]
    fn wire_values_round_trip() {
        for kind in [
            Kind::Hello,
            Kind::Invoke,
            Kind::Response,
            Kind::Error,
            Kind::Log,
            Kind::Context,
        ] {
            assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(7), None);
        for code in [
            ErrorCode::Handler,
            ErrorCode::Panic,
            ErrorCode::EventTooLarge,
            ErrorCode::OutOfMemory,
            ErrorCode::Protocol,
            ErrorCode::Function,
        ] {
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(7), None);
    }

    #[test]
    fn error_payloads_decode_without_panics() {
        let mut p = [0u8; 6];
        p[..2].copy_from_slice(&error_code_bytes(ErrorCode::Panic));
        p[2..].copy_from_slice(b"boom");
        assert_eq!(decode_error(&p), (ErrorCode::Panic, "boom"));
        assert_eq!(decode_error(&[1]).0, ErrorCode::Protocol);
        assert_eq!(decode_error(&[99, 0]).0, ErrorCode::Protocol);
    }
}
