//! The function's log as Lambda shows it (`X-Amz-Log-Type: Tail`): the guest's log lines
//! between `START` and `END` lines and a `REPORT` line, of which the last 4 KB go base64
//! encoded into `X-Amz-Log-Result`; and the base64 codec that needs (standard alphabet,
//! padded), also used for `X-Amz-Client-Context`.

use std::time::Duration;

/// How much of the log `X-Amz-Log-Result` carries.
pub const TAIL_BYTES: usize = 4096;

/// What the `REPORT` line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// The handler's time.
    pub duration: Duration,
    pub memory_mib: u32,
    /// The start of the instance, on a cold start.
    pub init: Option<Duration>,
}

/// The whole log of request `request_id`: `START`, the guest's lines, `END`, `REPORT`.
pub fn log(request_id: &str, logs: &[u8], report: &Report) -> Vec<u8> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = format!("START RequestId: {request_id} Version: $LATEST\n").into_bytes();
    out.extend_from_slice(logs);
    if !logs.is_empty() && !logs.ends_with(b"\n") {
        out.push(b'\n');
    }
    // Rounded up to the millisecond, as Lambda bills.
    let billed = report.duration.as_nanos().div_ceil(1_000_000).max(1);
    out.extend_from_slice(
        format!(
            "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB\t",
            ms(report.duration),
            report.memory_mib,
        )
        .as_bytes(),
    );
    if let Some(init) = report.init {
        out.extend_from_slice(format!("Init Duration: {:.2} ms\t", ms(init)).as_bytes());
    }
    out.push(b'\n');
    out
}

/// `X-Amz-Log-Result`: the last [`TAIL_BYTES`] of `log`, base64.
pub fn log_result(log: &[u8]) -> String {
    encode(
        log.get(log.len().saturating_sub(TAIL_BYTES)..)
            .unwrap_or(log),
    )
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextet =
            |shift: u32| char::from(ALPHABET[usize::try_from((n >> shift) & 63).unwrap_or(0)]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// Decodes standard base64 (padding optional, no whitespace); `None` if it is not base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim_end_matches('=');
    if text.len() - t.len() > 2 || t.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in t.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)?;
        acc = acc << 6 | u32::try_from(v).ok()?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_known_values() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Some(all));
        assert_eq!(decode("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        for bad in ["Z", "Zm9v!", "Zm===", "Zg=\n"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_log_has_lambda_lines_and_the_tail_its_end() {
        let report = Report {
            duration: Duration::from_micros(1500),
            memory_mib: 128,
            init: Some(Duration::from_millis(60)),
        };
        let text = String::from_utf8(log("r-1", b"hello\nworld", &report)).unwrap();
        assert_eq!(
            text,
            "START RequestId: r-1 Version: $LATEST\nhello\nworld\nEND RequestId: r-1\nREPORT RequestId: r-1\tDuration: 1.50 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tInit Duration: 60.00 ms\t\n"
        );
        let long = vec![b'x'; 10_000];
        let tail = decode(&log_result(&long)).unwrap();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert_eq!(decode(&log_result(b"abc")).unwrap(), b"abc");
    }
}
