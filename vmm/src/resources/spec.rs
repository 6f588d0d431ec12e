//! What Firecracker's API spec lets a client send that a plain serde derive would refuse:
//!
//! - an explicit `null` for an optional field that has a default (`"smt": null`,
//!   `"drives": null`): [`null_as_default`] reads it as the default, as if the field were
//!   absent;
//! - a field or section of the spec for a feature Kiln does not have yet
//!   (`"memory-hotplug": {...}`): typed [`NotYet`], which takes any value
//!   so that the parser never calls it an unknown field; the resource's validation then
//!   refuses a present one with [`ResourceError::NotYet`], naming the feature. `null` (and
//!   an empty list for list sections) stays accepted: it asks for nothing.
//!
//! Fields that are in no version of the spec stay refused by `deny_unknown_fields`, with
//! their name.

use super::ResourceError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `deserialize_with` for optional fields with a default: `null` is the default.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The value of a spec field for a feature Kiln lacks: parsed (any JSON value), never
/// used, written back as `null` (`GET /vm/config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotYet;

impl<'de> Deserialize<'de> for NotYet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(NotYet)
    }
}

impl Serialize for NotYet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

/// Refuses a present value of a field or section Kiln lacks. `section` is where it was
/// (`drives`, `mmds-config`), `feature` what it asks for.
pub fn refuse_if_present<T>(
    value: &Option<T>,
    section: &'static str,
    feature: &'static str,
) -> Result<(), ResourceError> {
    match value {
        Some(_) => Err(ResourceError::NotYet { section, feature }),
        None => Ok(()),
    }
}

/// Refuses a non-empty list section Kiln lacks (`"pmem": []` asks for nothing).
pub fn refuse_if_listed<T>(
    list: &[T],
    section: &'static str,
    feature: &'static str,
) -> Result<(), ResourceError> {
    if list.is_empty() {
        Ok(())
    } else {
        Err(ResourceError::NotYet { section, feature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "null_as_default")]
        flag: bool,
        #[serde(default, deserialize_with = "null_as_default")]
        list: Vec<u8>,
        #[serde(default)]
        later: Option<NotYet>,
    }

    #[test]
    fn null_is_the_default_and_not_yet_takes_any_value() {
        let b: Body =
            serde_json::from_str(r#"{"flag": null, "list": null, "later": null}"#).unwrap();
        assert_eq!(
            b,
            Body {
                flag: false,
                list: vec![],
                later: None
            }
        );
        let b: Body =
            serde_json::from_str(r#"{"flag": true, "later": {"a": [1, {"b": null}]}}"#).unwrap();
        assert!(b.flag);
        assert_eq!(b.later, Some(NotYet));
        assert_eq!(
            refuse_if_present(&b.later, "s", "the thing").unwrap_err(),
            ResourceError::NotYet {
                section: "s",
                feature: "the thing"
            }
        );
        assert!(refuse_if_listed::<u8>(&[], "s", "x").is_ok());
        assert!(refuse_if_listed(&[1], "s", "x").is_err());
        // Written back as null.
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"flag":true,"list":[],"later":null}"#
        );
        // A wrong type is still an error, and an unknown field is still named.
        assert!(serde_json::from_str::<Body>(r#"{"flag": 1}"#).is_err());
        let e = serde_json::from_str::<Body>(r#"{"bogus": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }
}
