//! The kernel command line: space-separated `key=value` (or bare `key`) words, as Linux
//! splits them (no quoting). The last occurrence of a key wins.

/// Value of the last `key=value` word, `Some(b"")` for a bare `key`, `None` if absent.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for word in cmdline.split(|b| matches!(b, b' ' | b'\t' | b'\n')) {
        if let Some(rest) = word.strip_prefix(key) {
            match rest.split_first() {
                None => found = Some(&rest[..0]),
                Some((b'=', value)) => found = Some(value),
                Some(_) => {}
            }
        }
    }
    found
}
