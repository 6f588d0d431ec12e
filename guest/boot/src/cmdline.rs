//! The kernel command line: `key=value` (or bare `key`) words separated by spaces, tabs or
//! newlines, as Linux splits them (no quoting). The last occurrence of a key wins.

/// Value of the last `key=value` word of `cmdline`, `Some(b"")` for a bare `key`, `None`
/// when absent.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for word in words(cmdline) {
        if let Some(rest) = word.strip_prefix(key) {
            match rest.split_first() {
                None => found = Some(rest),
                Some((b'=', value)) => found = Some(value),
                Some(_) => {}
            }
        }
    }
    found
}

/// The words of `cmdline` (empty ones included where separators repeat).
pub fn words(cmdline: &[u8]) -> impl Iterator<Item = &[u8]> {
    cmdline.split(|b| matches!(b, b' ' | b'\t' | b'\n'))
}

/// A number: decimal, or hex with `0x`; `None` when empty, malformed or over `u64::MAX`.
pub fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' if radix == 16 => c - b'a' + 10,
            b'A'..=b'F' if radix == 16 => c - b'A' + 10,
            _ => return None,
        };
        v = v.checked_mul(radix)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// `key=N` from the command line as a number, or `default` when absent or malformed.
pub fn param_num(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    param(cmdline, key).and_then(parse_num).unwrap_or(default)
}
