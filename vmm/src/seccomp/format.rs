//! The compiled filter set file (`--seccomp-filter FILE` when FILE is not JSON, and the
//! filters `vmm/build.rs` embeds in the binary). Little-endian throughout:
//!
//! ```text
//! magic    8 bytes   "KILN-BPF"
//! version  u32       1
//! count    u32       number of filters, 1..=16
//! count times:
//!   name_len u8      1..=32
//!   name     name_len bytes of [a-z0-9_]   (a thread kind: api, vmm, vcpu)
//!   len      u32     instructions, 1..=4096 (the kernel's BPF_MAXINSNS)
//!   len times: code u16, jt u8, jf u8, k u32   (struct sock_filter)
//! ```
//!
//! Nothing may follow the last filter. This module depends on `std` and `thiserror` only:
//! `vmm/build.rs` includes it to write the embedded set.

/// First bytes of a compiled filter set.
pub const MAGIC: &[u8; 8] = b"KILN-BPF";
/// The only version there is.
pub const VERSION: u32 = 1;
/// Most filters in one set.
pub const MAX_FILTERS: usize = 16;
/// Longest filter name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest program the kernel accepts (`BPF_MAXINSNS`).
pub const BPF_MAX_LEN: usize = 4096;
/// Bytes per `struct sock_filter`.
pub const INSTRUCTION_BYTES: usize = 8;

/// One classic BPF instruction: `(code, jt, jf, k)`.
pub type Instruction = (u16, u8, u8, u32);

/// Why a compiled filter set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("it does not start with the magic bytes \"KILN-BPF\"")]
    Magic,
    #[error("version {0} is not supported (only version 1 is)")]
    Version(u32),
    #[error("it is truncated (at byte {0})")]
    Truncated(usize),
    #[error("it holds {0} filters (at least 1, at most {MAX_FILTERS})")]
    Count(u32),
    #[error("filter {index}: a name of {len} bytes (1 to {MAX_NAME_LEN} of [a-z0-9_])")]
    NameLength { index: usize, len: usize },
    #[error("filter {index}: the name {name:?} has characters other than [a-z0-9_]")]
    NameChars { index: usize, name: String },
    #[error("filter {name:?} appears twice")]
    Duplicate { name: String },
    #[error("filter {name:?}: {len} instructions (at least 1, at most {BPF_MAX_LEN})")]
    Length { name: String, len: u32 },
    #[error("{0} bytes follow the last filter")]
    Trailing(usize),
}

/// Writes a filter set.
pub fn encode(filters: &[(&str, &[Instruction])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(filters.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (name, program) in filters {
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(
            &u32::try_from(program.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for &(code, jt, jf, k) in program.iter() {
            out.extend_from_slice(&code.to_le_bytes());
            out.push(jt);
            out.push(jf);
            out.extend_from_slice(&k.to_le_bytes());
        }
    }
    out
}

/// True when `bytes` claims to be a compiled filter set (rather than JSON).
pub fn is_compiled(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(FormatError::Truncated(self.at))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(FormatError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let at = self.at;
        self.take(N)?
            .try_into()
            .map_err(|_| FormatError::Truncated(at))
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// Reads a filter set, checking every length and name (not the programs themselves).
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, Vec<Instruction>)>, FormatError> {
    if !is_compiled(bytes) {
        return Err(FormatError::Magic);
    }
    let mut r = Reader {
        bytes,
        at: MAGIC.len(),
    };
    let version = r.u32()?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let count = r.u32()?;
    if count == 0 || usize::try_from(count).map_or(true, |c| c > MAX_FILTERS) {
        return Err(FormatError::Count(count));
    }
    let mut filters: Vec<(String, Vec<Instruction>)> = Vec::new();
    for index in 0..usize::try_from(count).unwrap_or(0) {
        let len = usize::from(r.u8()?);
        if len == 0 || len > MAX_NAME_LEN {
            return Err(FormatError::NameLength { index, len });
        }
        let raw = r.take(len)?;
        let name = String::from_utf8_lossy(raw).into_owned();
        if !raw
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            return Err(FormatError::NameChars { index, name });
        }
        if filters.iter().any(|(n, _)| *n == name) {
            return Err(FormatError::Duplicate { name });
        }
        let n = r.u32()?;
        let count = usize::try_from(n).unwrap_or(usize::MAX);
        if count == 0 || count > BPF_MAX_LEN {
            return Err(FormatError::Length { name, len: n });
        }
        let mut program = Vec::with_capacity(count);
        for _ in 0..count {
            program.push((r.u16()?, r.u8()?, r.u8()?, r.u32()?));
        }
        filters.push((name, program));
    }
    let rest = bytes.len().saturating_sub(r.at);
    if rest != 0 {
        return Err(FormatError::Trailing(rest));
    }
    Ok(filters)
}
