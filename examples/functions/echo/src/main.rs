//! echo: answers a JSON event `E` with `{"echo":E}`.
//!
//! The event is checked to be one JSON value (RFC 8259) by a small validator that allocates
//! nothing (serde_json would add ~100 KiB to the image for the same answer), then copied into
//! the response unchanged. An event that is not JSON is a handler error naming the byte where
//! it went wrong.

#![no_std]
#![no_main]

use kiln_runtime::prelude::*;

kiln_runtime::function!(echo);

fn echo(event: &[u8]) -> Result<Vec<u8>, String> {
    json::validate(event)
        .map_err(|(at, what)| format!("event is not JSON: {what} at byte {at}"))?;
    let mut out = Vec::with_capacity(event.len() + 10);
    out.extend_from_slice(b"{\"echo\":");
    out.extend_from_slice(event);
    out.push(b'}');
    Ok(out)
}

mod json {
    //! A JSON validator: one value, surrounded by optional whitespace, nesting at most
    //! [`MAX_DEPTH`] deep (so that a hostile event cannot exhaust the stack).

    pub const MAX_DEPTH: usize = 128;

    type Result = core::result::Result<(), (usize, &'static str)>;

    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }

    pub fn validate(b: &[u8]) -> Result {
        let mut p = P { b, i: 0 };
        p.ws();
        p.value(0)?;
        p.ws();
        if p.i != b.len() {
            return Err((p.i, "trailing characters"));
        }
        Ok(())
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }

        fn lit(&mut self, word: &[u8]) -> Result {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                Ok(())
            } else {
                Err((self.i, "invalid literal"))
            }
        }

        fn value(&mut self, depth: usize) -> Result {
            if depth > MAX_DEPTH {
                return Err((self.i, "nesting too deep"));
            }
            match self.peek() {
                Some(b'{') => self.object(depth),
                Some(b'[') => self.array(depth),
                Some(b'"') => self.string(),
                Some(b't') => self.lit(b"true"),
                Some(b'f') => self.lit(b"false"),
                Some(b'n') => self.lit(b"null"),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => Err((self.i, "unexpected character")),
                None => Err((self.i, "unexpected end")),
            }
        }

        fn object(&mut self, depth: usize) -> Result {
            self.i += 1;
            self.ws();
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(());
            }
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err((self.i, "expected a string key"));
                }
                self.string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return Err((self.i, "expected ':'"));
                }
                self.i += 1;
                self.ws();
                self.value(depth + 1)?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        return Ok(());
                    }
                    _ => return Err((self.i, "expected ',' or '}'")),
                }
            }
        }

        fn array(&mut self, depth: usize) -> Result {
            self.i += 1;
            self.ws();
            if self.peek() == Some(b']') {
                self.i += 1;
                return Ok(());
            }
            loop {
                self.ws();
                self.value(depth + 1)?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b']') => {
                        self.i += 1;
                        return Ok(());
                    }
                    _ => return Err((self.i, "expected ',' or ']'")),
                }
            }
        }

        fn string(&mut self) -> Result {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err((self.i, "unterminated string")),
                    Some(b'"') => {
                        self.i += 1;
                        return Ok(());
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        match self.peek() {
                            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                                self.i += 1
                            }
                            Some(b'u') => {
                                let hex = self.b.get(self.i + 1..self.i + 5);
                                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                    return Err((self.i, "bad \\u escape"));
                                }
                                self.i += 5;
                            }
                            _ => return Err((self.i, "bad escape")),
                        }
                    }
                    Some(c) if c < 0x20 => return Err((self.i, "control character in string")),
                    Some(_) => self.i += 1,
                }
            }
        }

        fn digits(&mut self) -> usize {
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            self.i - start
        }

        fn number(&mut self) -> Result {
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            match self.peek() {
                Some(b'0') => self.i += 1,
                Some(b'1'..=b'9') => {
                    self.digits();
                }
                _ => return Err((self.i, "bad number")),
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if self.digits() == 0 {
                    return Err((self.i, "bad fraction"));
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if self.digits() == 0 {
                    return Err((self.i, "bad exponent"));
                }
            }
            Ok(())
        }
    }
}
