//! The access keys the Invoke API verifies signatures with (`kiln serve --credentials FILE`):
//! a file in the format of AWS's shared credentials file (`~/.aws/credentials`), so the same
//! file can serve the client and the worker:
//!
//! ```ini
//! [default]
//! aws_access_key_id = AKIDEXAMPLE
//! aws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
//! ```
//!
//! Every section's key pair is accepted; other keys (`aws_session_token`, `region`, ...) are
//! ignored; `#` and `;` start comment lines. The file is read under the project's input-file
//! rule (`kiln_hostfs::read_text`: a regular file or pipe, at most 64 KiB).

use std::path::{Path, PathBuf};

/// Largest credentials file.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: kiln_hostfs::InputError,
    },
    #[error("credentials file {path}, line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("credentials file {path}: section [{section}] has {has} but not {lacks}")]
    Incomplete {
        path: PathBuf,
        section: String,
        has: &'static str,
        lacks: &'static str,
    },
    #[error("credentials file {path} holds no aws_access_key_id / aws_secret_access_key pair")]
    Empty { path: PathBuf },
}

/// Access key id → secret access key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    keys: Vec<(String, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Credentials").field("keys", &ids).finish()
    }
}

const KEY_ID: &str = "aws_access_key_id";
const SECRET: &str = "aws_secret_access_key";

impl Credentials {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = kiln_hostfs::read_text(path, MAX_FILE_BYTES).map_err(|source| {
            CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Credentials::parse(&text, path)
    }

    /// Parses the text of a credentials file; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Credentials, CredentialsError> {
        let mut keys = Vec::new();
        let mut section = String::from("(before any section)");
        let mut pending: (Option<String>, Option<String>) = (None, None);
        let finish = |section: &str,
                      pending: &mut (Option<String>, Option<String>),
                      keys: &mut Vec<(String, String)>| {
            match std::mem::take(pending) {
                (Some(id), Some(secret)) => keys.push((id, secret)),
                (None, None) => {}
                (Some(_), None) => {
                    return Err(CredentialsError::Incomplete {
                        path: path.to_path_buf(),
                        section: section.to_string(),
                        has: KEY_ID,
                        lacks: SECRET,
                    })
                }
                (None, Some(_)) => {
                    return Err(CredentialsError::Incomplete {
                        path: path.to_path_buf(),
                        section: section.to_string(),
                        has: SECRET,
                        lacks: KEY_ID,
                    })
                }
            }
            Ok(())
        };
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                finish(&section, &mut pending, &mut keys)?;
                section = name.trim().to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(CredentialsError::Syntax {
                    path: path.to_path_buf(),
                    line: n + 1,
                    reason: "expected `[section]` or `key = value`".into(),
                });
            };
            let (k, v) = (k.trim(), v.trim());
            let slot = match k {
                KEY_ID => &mut pending.0,
                SECRET => &mut pending.1,
                _ => continue,
            };
            if v.is_empty() {
                return Err(CredentialsError::Syntax {
                    path: path.to_path_buf(),
                    line: n + 1,
                    reason: format!("{k} is empty"),
                });
            }
            *slot = Some(v.to_string());
        }
        finish(&section, &mut pending, &mut keys)?;
        if keys.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Credentials { keys })
    }

    /// The secret of access key `id`.
    pub fn secret(&self, id: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, s)| s.as_str())
    }

    /// How many access keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        Credentials::parse(text, Path::new("/c"))
    }

    #[test]
    fn every_section_gives_a_key() {
        let c = parse(
            "# comment\n[default]\naws_access_key_id = AKID1\naws_secret_access_key=s1/+x\nregion = eu-west-1\n\n; other\n[other]\naws_secret_access_key = s2\naws_access_key_id = AKID2\naws_session_token = t\n",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.secret("AKID1"), Some("s1/+x"));
        assert_eq!(c.secret("AKID2"), Some("s2"));
        assert_eq!(c.secret("nope"), None);
        assert!(!format!("{c:?}").contains("s1"), "Debug hides the secrets");
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for (text, needle) in [
            ("", "holds no aws_access_key_id"),
            ("[x]\nregion = y\n", "holds no"),
            (
                "[a]\naws_access_key_id = K\n",
                "section [a] has aws_access_key_id but not",
            ),
            (
                "[a]\naws_secret_access_key = S\n[b]\n",
                "section [a] has aws_secret_access_key",
            ),
            ("[a]\njunk\n", "line 2: expected"),
            (
                "[a]\naws_access_key_id =\n",
                "line 2: aws_access_key_id is empty",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
