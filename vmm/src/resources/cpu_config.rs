//! `cpu-config` (`PUT /cpu-config`): a custom CPU template, Firecracker's shape.
//!
//! ```json
//! {"kvm_capabilities": ["171", "!172"],
//!  "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
//!                       "modifiers": [{"register": "ecx", "bitmap": "0bxx0xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}],
//!  "msr_modifiers": [{"addr": "0x277", "bitmap": "0b0000_0001_xxxx..."}]}
//! ```
//!
//! Numbers (`leaf`, `subleaf`, `addr`) are strings in hex (`0x`), binary (`0b`) or decimal.
//! A bitmap has one character per bit, most significant first, after an optional `0b`: `0`
//! clears the bit, `1` sets it, `x` leaves it; `_` separates for readability; bits left of
//! the string are left alone. `kvm_capabilities` are KVM capability numbers the host must
//! have, or with `!` ones it need not have. `reg_modifiers` and `vcpu_features` are for
//! aarch64 hosts: accepted when empty, refused otherwise.
//!
//! Parsing checks the syntax; whether KVM has each leaf, MSR and capability is checked when
//! the template is applied at `InstanceStart` ([`crate::arch::x86_64::custom_template`]).
//! The config file's `cpu-config` may also be a path to a file holding the template, as in
//! Firecracker.

use super::{parse_json, ResourceError};
use serde::de::{Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::Path;

/// Most entries of each list: far more than any real template (Firecracker's have about 10
/// CPUID leaves and 1 MSR), few enough that applying one costs nothing.
pub const MAX_CPUID_MODIFIERS: usize = 256;
pub const MAX_REGISTER_MODIFIERS: usize = 16;
pub const MAX_MSR_MODIFIERS: usize = 256;
pub const MAX_KVM_CAPABILITIES: usize = 64;
/// Largest template file the config file may name.
pub const MAX_TEMPLATE_FILE_BYTES: u64 = 1 << 20;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// Bits to set, clear or keep in a register of `BITS` bits: the new value is
/// `(old & !mask) | value` (`value` only has bits inside `mask`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bitmap<const BITS: u32> {
    pub mask: u64,
    pub value: u64,
}

impl<const BITS: u32> Bitmap<BITS> {
    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.mask) | self.value
    }

    fn parse(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let (mut mask, mut value, mut bit) = (0u64, 0u64, 0u32);
        for c in digits.bytes().rev() {
            if c == b'_' {
                continue;
            }
            if bit == BITS {
                return Err(format!(
                    "bitmap {text:?} has more than {BITS} bits ('0', '1' or 'x' each)"
                ));
            }
            match c {
                b'x' => {}
                b'0' => mask |= 1 << bit,
                b'1' => {
                    mask |= 1 << bit;
                    value |= 1 << bit;
                }
                other => {
                    return Err(format!(
                        "bitmap {text:?} has {:?}; use '0' (clear), '1' (set), 'x' (keep) or '_'",
                        char::from(other)
                    ))
                }
            }
            bit += 1;
        }
        Ok(Bitmap { mask, value })
    }
}

impl<const BITS: u32> std::fmt::Display for Bitmap<BITS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("0b")?;
        for bit in (0..BITS).rev() {
            let c = match (self.mask >> bit & 1, self.value >> bit & 1) {
                (0, _) => 'x',
                (_, 0) => '0',
                _ => '1',
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl<'de, const BITS: u32> Deserialize<'de> for Bitmap<BITS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Bitmap::parse(&text).map_err(D::Error::custom)
    }
}

impl<const BITS: u32> Serialize for Bitmap<BITS> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A 32-bit number written as a string: `0x` hex, `0b` binary, or decimal.
fn parse_u32(text: &str) -> Result<u32, String> {
    let (digits, radix) = if let Some(h) = text.strip_prefix("0x") {
        (h, 16)
    } else if let Some(b) = text.strip_prefix("0b") {
        (b, 2)
    } else {
        (text, 10)
    };
    u32::from_str_radix(digits, radix).map_err(|_| {
        format!("{text:?} is not a 32-bit number (write it as \"0x1f\", \"0b11111\" or \"31\")")
    })
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    parse_u32(&String::deserialize(d)?).map_err(D::Error::custom)
}

fn ser_hex<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

/// One register of a CPUID leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: Bitmap<32>,
}

/// The changes to one CPUID leaf and subleaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "de_u32", serialize_with = "ser_hex")]
    pub leaf: u32,
    #[serde(deserialize_with = "de_u32", serialize_with = "ser_hex")]
    pub subleaf: u32,
    /// KVM's flags of the entry (`KVM_CPUID_FLAG_SIGNIFCANT_INDEX` = 1), set as given.
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// The change to one model-specific register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "de_u32", serialize_with = "ser_hex")]
    pub addr: u32,
    pub bitmap: Bitmap<64>,
}

/// A KVM capability the template needs (`"171"`) or does not need (`"!171"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmCapability {
    Add(u32),
    Remove(u32),
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (remove, number) = match text.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, text.as_str()),
        };
        let cap: u32 = number.parse().map_err(|_| {
            D::Error::custom(format!(
                "kvm capability {text:?} is not a decimal KVM capability number, with '!' in front to remove it"
            ))
        })?;
        Ok(if remove {
            KvmCapability::Remove(cap)
        } else {
            KvmCapability::Add(cap)
        })
    }
}

impl Serialize for KvmCapability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KvmCapability::Add(c) => s.collect_str(c),
            KvmCapability::Remove(c) => s.collect_str(&format_args!("!{c}")),
        }
    }
}

/// A custom CPU template. Lists may be absent or `null` (nothing to change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_capabilities: Option<Vec<KvmCapability>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuid_modifiers: Option<Vec<CpuidLeafModifier>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msr_modifiers: Option<Vec<MsrModifier>>,
    /// aarch64 only.
    #[serde(default, skip_serializing)]
    pub reg_modifiers: Option<Vec<IgnoredAny>>,
    /// aarch64 only.
    #[serde(default, skip_serializing)]
    pub vcpu_features: Option<Vec<IgnoredAny>>,
}

impl CpuConfig {
    pub fn kvm_capabilities(&self) -> &[KvmCapability] {
        self.kvm_capabilities.as_deref().unwrap_or_default()
    }

    pub fn cpuid_modifiers(&self) -> &[CpuidLeafModifier] {
        self.cpuid_modifiers.as_deref().unwrap_or_default()
    }

    pub fn msr_modifiers(&self) -> &[MsrModifier] {
        self.msr_modifiers.as_deref().unwrap_or_default()
    }

    /// Checks the lists' sizes and refuses aarch64's modifiers.
    pub(super) fn validated(self) -> Result<Self, ResourceError> {
        for (field, list) in [
            ("reg_modifiers", &self.reg_modifiers),
            ("vcpu_features", &self.vcpu_features),
        ] {
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ResourceError::CpuConfigArch(field));
            }
        }
        let limits = [
            (
                "kvm_capabilities",
                self.kvm_capabilities().len(),
                MAX_KVM_CAPABILITIES,
            ),
            (
                "cpuid_modifiers",
                self.cpuid_modifiers().len(),
                MAX_CPUID_MODIFIERS,
            ),
            (
                "msr_modifiers",
                self.msr_modifiers().len(),
                MAX_MSR_MODIFIERS,
            ),
        ];
        let per_leaf = self
            .cpuid_modifiers()
            .iter()
            .map(|l| l.modifiers.len())
            .max()
            .unwrap_or(0);
        for (field, count, max) in limits.into_iter().chain([(
            "cpuid_modifiers[].modifiers",
            per_leaf,
            MAX_REGISTER_MODIFIERS,
        )]) {
            if count > max {
                return Err(ResourceError::CpuConfigLimit { field, count, max });
            }
        }
        Ok(self)
    }
}

/// The config file's `cpu-config`: the template itself, or the path of a file holding it.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuConfigSource {
    Template(CpuConfig),
    Path(String),
}

impl CpuConfigSource {
    /// The template, read (bounded, as any input file) from its file when given by path.
    pub fn load(self) -> Result<CpuConfig, ResourceError> {
        match self {
            CpuConfigSource::Template(t) => Ok(t),
            CpuConfigSource::Path(path) => {
                let text = kiln_hostfs::read_text(Path::new(&path), MAX_TEMPLATE_FILE_BYTES)
                    .map_err(|e| ResourceError::BadPath {
                        field: "cpu-config",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                parse_json::<CpuConfig>(&text).map_err(|e| ResourceError::CpuConfigFile {
                    path,
                    reason: e.to_string(),
                })
            }
        }
    }
}

impl<'de> Deserialize<'de> for CpuConfigSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(path) => Ok(CpuConfigSource::Path(path)),
            other => CpuConfig::deserialize(other)
                .map(CpuConfigSource::Template)
                .map_err(D::Error::custom),
        }
    }
}

impl Serialize for CpuConfigSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CpuConfigSource::Template(t) => t.serialize(s),
            CpuConfigSource::Path(p) => s.serialize_str(p),
        }
    }
}

#[cfg(test)]
mod tests;
