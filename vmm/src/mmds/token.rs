//! MMDS V2 session tokens: `PUT /latest/api/token` with a time to live of 1 to 21600
//! seconds gives a token that later `GET`s present.
//!
//! A token is stateless: its expiry (milliseconds since the authority was made, 16 hex
//! digits) followed by the first 16 bytes of HMAC-SHA256(key, expiry) (32 hex digits). The
//! key is 32 random bytes taken from the host when the first token is made, and lives only
//! in this process: a microVM restored from a snapshot runs in a new VMM with a new key, so
//! every token made before the snapshot is refused after it. Nothing grows with the number
//! of tokens handed out.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Instant;

/// The shortest and longest time to live a token can be asked for (Firecracker's).
pub const MIN_TTL_SECONDS: u32 = 1;
pub const MAX_TTL_SECONDS: u32 = 21600;
/// The length of every token.
pub const TOKEN_LEN: usize = 16 + 2 * TAG_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token time to live {0} is out of range ({MIN_TTL_SECONDS} to {MAX_TTL_SECONDS} seconds)")]
    Ttl(u64),
    #[error("no random bytes for the token key: {0}")]
    Random(String),
}

#[derive(Clone)]
pub struct TokenAuthority {
    key: Option<[u8; KEY_LEN]>,
    origin: Instant,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl PartialEq for TokenAuthority {
    /// Authorities are alike when both have no key yet or both have the same one.
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Default for TokenAuthority {
    fn default() -> Self {
        TokenAuthority {
            key: None,
            origin: Instant::now(),
        }
    }
}

impl TokenAuthority {
    fn tag(key: &[u8; KEY_LEN], expiry_ms: u64) -> [u8; TAG_LEN] {
        // HMAC takes keys of any length: `new_from_slice` cannot fail.
        let mut tag = [0u8; TAG_LEN];
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
            mac.update(b"kiln-mmds-token");
            mac.update(&expiry_ms.to_be_bytes());
            let full = mac.finalize().into_bytes();
            if let Some(head) = full.get(..TAG_LEN) {
                tag.copy_from_slice(head);
            }
        }
        tag
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A token valid for `ttl_seconds` (checked against the bounds).
    pub fn issue(&mut self, ttl_seconds: u64) -> Result<String, TokenError> {
        let ttl = u32::try_from(ttl_seconds)
            .ok()
            .filter(|t| (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(t))
            .ok_or(TokenError::Ttl(ttl_seconds))?;
        let key = match self.key {
            Some(k) => k,
            None => {
                let mut k = [0u8; KEY_LEN];
                crate::random::fill_random(&mut k)
                    .map_err(|e| TokenError::Random(e.to_string()))?;
                self.key = Some(k);
                k
            }
        };
        let expiry = self.now_ms().saturating_add(u64::from(ttl) * 1000);
        let mut token = format!("{expiry:016x}");
        for b in Self::tag(&key, expiry) {
            token.push_str(&format!("{b:02x}"));
        }
        Ok(token)
    }

    /// Whether `token` was issued by this authority and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        let (Some(expiry_hex), Some(tag_hex)) = (token.get(..16), token.get(16..)) else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(expiry_hex, 16) else {
            return false;
        };
        let want = Self::tag(key, expiry);
        // Compared in full whatever differs first: the time taken tells nothing.
        let mut diff = 0u8;
        for (i, w) in want.iter().enumerate() {
            let got = tag_hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            diff |= match got {
                Some(g) => g ^ w,
                None => 0xff,
            };
        }
        diff == 0 && self.now_ms() < expiry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_are_checked_and_expire() {
        let mut a = TokenAuthority::default();
        assert!(!a.is_valid(&"0".repeat(TOKEN_LEN)), "no key, no token");
        assert_eq!(a.issue(0), Err(TokenError::Ttl(0)));
        assert_eq!(a.issue(21601), Err(TokenError::Ttl(21601)));
        assert_eq!(a.issue(u64::MAX), Err(TokenError::Ttl(u64::MAX)));
        let t = a.issue(21600).unwrap();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(a.is_valid(&t));
        // Any change is refused: the tag, the expiry, the length, the alphabet.
        let mut forged = t.clone().into_bytes();
        forged[TOKEN_LEN - 1] = if forged[TOKEN_LEN - 1] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert!(!a.is_valid(std::str::from_utf8(&forged).unwrap()));
        let later = format!("{:016x}{}", u64::MAX, &t[16..]);
        assert!(!a.is_valid(&later));
        assert!(!a.is_valid(&t[..TOKEN_LEN - 1]));
        assert!(!a.is_valid(&format!("{}g", &t[..TOKEN_LEN - 1])));
        assert!(!a.is_valid(&format!("{t}0")));
        // Another authority (another VMM, a restored snapshot) has another key.
        let mut b = TokenAuthority::default();
        b.issue(10).unwrap();
        assert!(!b.is_valid(&t));
        // Expiry.
        let short = a.issue(1).unwrap();
        assert!(a.is_valid(&short));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!a.is_valid(&short));
        assert!(a.is_valid(&t));
    }
}
