//! The MMDS data store: one JSON document, bounded by its serialised size.
//!
//! `PUT` replaces the document and `PATCH` applies a JSON merge patch (RFC 7396) to it; both
//! are refused, leaving the document unchanged, when the result would serialise to more
//! than the limit (`--mmds-size-limit`, by default the API's largest body). A `PATCH` before
//! any `PUT` is refused: there is nothing to patch yet.
//!
//! Reading a path (`/a/b`, a JSON pointer; a trailing `/` is ignored) gives the value in
//! JSON, or in IMDS form: an object lists its keys one per line (a key whose value is an
//! object gets a trailing `/`), a string is itself, anything else cannot be written that
//! way. With `imds_compat` every read is in IMDS form.

use super::token::{TokenAuthority, TokenError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The size limit when `--mmds-size-limit` is not given and the API's body limit is not
/// changed either (Firecracker's default API payload limit).
pub const DEFAULT_SIZE_LIMIT: usize = 51200;

/// `mmds-config` `version`: V1 answers plain GETs; V2 requires a session token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// How a read value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    /// EC2 IMDS's text form.
    Imds,
}

/// Why the store refused a change or a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the MMDS data store is limited to {limit} bytes and the new document would take {size} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the MMDS data store is empty: PUT /mmds a document before patching it")]
    NotInitialized,
    #[error("the MMDS data store has no value at {0:?}")]
    NotFound(String),
    #[error("the value at {0:?} is neither an object nor a string, so it has no IMDS form (ask for JSON)")]
    NotImdsFormattable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MmdsStore {
    document: Value,
    initialized: bool,
    size_limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    /// V2's session tokens (their key lives and dies with this store).
    tokens: TokenAuthority,
}

impl MmdsStore {
    pub fn new(size_limit: usize) -> Self {
        MmdsStore {
            document: Value::Null,
            initialized: false,
            size_limit,
            version: MmdsVersion::V1,
            imds_compat: false,
            tokens: TokenAuthority::default(),
        }
    }

    /// A V2 session token valid for `ttl_seconds`.
    pub fn issue_token(&mut self, ttl_seconds: u64) -> Result<String, TokenError> {
        self.tokens.issue(ttl_seconds)
    }

    pub fn is_valid_token(&self, token: &str) -> bool {
        self.tokens.is_valid(token)
    }

    pub fn size_limit(&self) -> usize {
        self.size_limit
    }

    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// `mmds-config`'s `version` and `imds_compat`.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// The document (`null` before the first `PUT`).
    pub fn document(&self) -> &Value {
        &self.document
    }

    fn check_size(&self, v: &Value) -> Result<(), StoreError> {
        let size = serialized_len(v);
        if size > self.size_limit {
            return Err(StoreError::TooLarge {
                size,
                limit: self.size_limit,
            });
        }
        Ok(())
    }

    /// `PUT /mmds`: replaces the document.
    pub fn put(&mut self, document: Value) -> Result<(), StoreError> {
        self.check_size(&document)?;
        self.document = document;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: merges `patch` into the document (RFC 7396).
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        let mut patched = self.document.clone();
        merge_patch(&mut patched, patch);
        self.check_size(&patched)?;
        self.document = patched;
        Ok(())
    }

    /// The value at `path` (`/` or empty: the whole document), written in `format` (IMDS
    /// whatever is asked when `imds_compat` is on).
    pub fn read(&self, path: &str, format: OutputFormat) -> Result<String, StoreError> {
        let pointer = path.strip_suffix('/').unwrap_or(path);
        let value = self
            .document
            .pointer(pointer)
            .ok_or_else(|| StoreError::NotFound(path.to_string()))?;
        if self.imds_compat || format == OutputFormat::Imds {
            imds_text(value).ok_or_else(|| StoreError::NotImdsFormattable(path.to_string()))
        } else {
            Ok(value.to_string())
        }
    }
}

/// The length of `v` as compact JSON, counted without building the text.
fn serialized_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail (its keys are strings).
    match serde_json::to_writer(&mut count, v) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// RFC 7396: an object patch merges key by key (`null` removes the key); anything else
/// replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        for (key, change) in changes {
            if change.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
}

/// The IMDS form of a value: an object's keys one per line (objects marked with a trailing
/// `/`), a string as is; `None` for other values.
fn imds_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/")
                    } else {
                        k.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_patch_read() {
        let mut s = MmdsStore::new(DEFAULT_SIZE_LIMIT);
        assert_eq!(s.patch(&json!({"a": 1})), Err(StoreError::NotInitialized));
        s.put(json!({"meta-data": {"iam": "x", "n": 3}, "user-data": "u"}))
            .unwrap();
        s.patch(&json!({"user-data": null, "meta-data": {"n": 4}, "new": [1]}))
            .unwrap();
        assert_eq!(
            s.document(),
            &json!({"meta-data": {"iam": "x", "n": 4}, "new": [1]})
        );
        assert_eq!(
            s.read("/meta-data/iam", OutputFormat::Json).unwrap(),
            "\"x\""
        );
        assert_eq!(s.read("/meta-data/iam", OutputFormat::Imds).unwrap(), "x");
        assert_eq!(s.read("/", OutputFormat::Imds).unwrap(), "meta-data/\nnew");
        assert_eq!(s.read("/meta-data/", OutputFormat::Imds).unwrap(), "iam\nn");
        assert_eq!(
            s.read("/meta-data/n", OutputFormat::Imds),
            Err(StoreError::NotImdsFormattable("/meta-data/n".into()))
        );
        assert_eq!(
            s.read("/nope", OutputFormat::Json),
            Err(StoreError::NotFound("/nope".into()))
        );
        s.configure(MmdsVersion::V2, true);
        assert_eq!(s.read("/meta-data/iam", OutputFormat::Json).unwrap(), "x");
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // RFC 7396 appendix A, a selection.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn the_size_limit_leaves_the_document_unchanged() {
        let mut s = MmdsStore::new(20);
        s.put(json!({"k": "0123456789"})).unwrap(); // 18 bytes
        assert_eq!(serialized_len(s.document()), 18);
        assert_eq!(
            s.put(json!({"k": "0123456789abc"})),
            Err(StoreError::TooLarge {
                size: 21,
                limit: 20
            })
        );
        assert_eq!(
            s.patch(&json!({"x": 1})),
            Err(StoreError::TooLarge {
                size: 24,
                limit: 20
            })
        );
        assert_eq!(s.document(), &json!({"k": "0123456789"}));
    }
}
