//! Key/value pairs as bytes: `key NUL value NUL`, repeated, in order; a key may repeat. Keys
//! and values are UTF-8 without NUL. It carries a [`crate::Kind::Context`] payload and a Lambda
//! function's configuration ([`crate::lambda_config`]).

/// Why bytes are not pairs, or a pair cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairsError {
    /// A key without its value, or a value without its terminating NUL.
    Truncated,
    /// A key or a value is not UTF-8.
    NotUtf8,
    /// A key or value to write contains NUL.
    Nul,
}

impl core::fmt::Display for PairsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PairsError::Truncated => "a key or value is not terminated by NUL",
            PairsError::NotUtf8 => "a key or value is not UTF-8",
            PairsError::Nul => "a key or value contains NUL",
        })
    }
}

/// Appends `key NUL value NUL` to `out`.
pub fn put(out: &mut impl Extend<u8>, key: &str, value: &str) -> Result<(), PairsError> {
    if key.contains('\0') || value.contains('\0') {
        return Err(PairsError::Nul);
    }
    out.extend(key.bytes().chain([0]).chain(value.bytes()).chain([0]));
    Ok(())
}

/// The pairs of `bytes`, in order; a malformed pair ends the iteration with its error.
pub fn iter(bytes: &[u8]) -> Pairs<'_> {
    Pairs { rest: Some(bytes) }
}

/// The first value of `key` in `bytes`, if it is there and everything before it is well
/// formed.
pub fn get<'a>(bytes: &'a [u8], key: &str) -> Option<&'a str> {
    iter(bytes)
        .map_while(Result::ok)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Iterator of [`iter`].
pub struct Pairs<'a> {
    rest: Option<&'a [u8]>,
}

fn field(bytes: &[u8]) -> Result<(&str, &[u8]), PairsError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(PairsError::Truncated)?;
    let text = bytes.get(..end).ok_or(PairsError::Truncated)?;
    let text = core::str::from_utf8(text).map_err(|_| PairsError::NotUtf8)?;
    Ok((text, bytes.get(end + 1..).unwrap_or_default()))
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Result<(&'a str, &'a str), PairsError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.rest.take()?;
        if bytes.is_empty() {
            return None;
        }
        let pair = field(bytes).and_then(|(key, rest)| {
            let (value, rest) = field(rest)?;
            Ok((key, value, rest))
        });
        match pair {
            Ok((key, value, rest)) => {
                self.rest = Some(rest);
                Some(Ok((key, value)))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed buffer standing for a `Vec` (the crate has no allocator).
    struct Buf {
        b: [u8; 64],
        len: usize,
    }

    impl Extend<u8> for Buf {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, it: I) {
            for x in it {
                self.b[self.len] = x;
                self.len += 1;
            }
        }
    }

    #[test]
    fn pairs_round_trip_in_order() {
        let mut buf = Buf { b: [0; 64], len: 0 };
        put(&mut buf, "request-id", "abc").unwrap();
        put(&mut buf, "env", "A=1").unwrap();
        put(&mut buf, "env", "").unwrap();
        let bytes = &buf.b[..buf.len];
        assert_eq!(bytes, b"request-id\0abc\0env\0A=1\0env\0\0");
        let mut it = iter(bytes);
        assert_eq!(it.next(), Some(Ok(("request-id", "abc"))));
        assert_eq!(it.next(), Some(Ok(("env", "A=1"))));
        assert_eq!(it.next(), Some(Ok(("env", ""))));
        assert_eq!(it.next(), None);
        assert_eq!(get(bytes, "env"), Some("A=1"));
        assert_eq!(get(bytes, "missing"), None);
        assert_eq!(put(&mut buf, "k", "a\0b"), Err(PairsError::Nul));
    }

    #[test]
    fn malformed_pairs_end_with_an_error_never_a_panic() {
        for (bytes, err) in [
            (&b"key"[..], PairsError::Truncated),
            (b"key\0value", PairsError::Truncated),
            (b"\xff\0v\0", PairsError::NotUtf8),
            (b"k\0\xfe\0", PairsError::NotUtf8),
        ] {
            let all: [Option<Result<(&str, &str), PairsError>>; 2] = {
                let mut it = iter(bytes);
                [it.next(), it.next()]
            };
            assert_eq!(all, [Some(Err(err)), None], "{bytes:?}");
        }
        assert_eq!(iter(b"").next(), None);
        assert_eq!(get(b"a\0b\0broken", "c"), None);
    }
}
