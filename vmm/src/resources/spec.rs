//! What Firecracker's API spec lets a client send that a plain serde derive would refuse:
//!
//! - an explicit `null` for an optional field that has a default (`"smt": null`,
//!   `"drives": null`): [`null_as_default`] reads it as the default, as if the field were
//!   absent;
//! - a field of the spec for a feature Kiln does not have (a drive's vhost-user `socket`):
//!   parsed as its own type so that it is never an unknown field, then refused when present
//!   by [`refuse_if_present`] with [`ResourceError::NotYet`], naming the feature.
//!
//! Fields that are in no version of the spec stay refused by `deny_unknown_fields`, with
//! their name.

use super::ResourceError;
use serde::{Deserialize, Deserializer};

/// `deserialize_with` for optional fields with a default: `null` is the default.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Refuses a present value of a field Kiln lacks. `section` is where it was (`drives`),
/// `feature` what it asks for.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "null_as_default")]
        flag: bool,
        #[serde(default, deserialize_with = "null_as_default")]
        list: Vec<u8>,
    }

    #[test]
    fn null_is_the_default() {
        let b: Body = serde_json::from_str(r#"{"flag": null, "list": null}"#).unwrap();
        assert_eq!(
            b,
            Body {
                flag: false,
                list: vec![]
            }
        );
        let b: Body = serde_json::from_str(r#"{"flag": true, "list": [1]}"#).unwrap();
        assert_eq!(
            b,
            Body {
                flag: true,
                list: vec![1]
            }
        );
        assert_eq!(
            refuse_if_present(&Some(1), "s", "the thing").unwrap_err(),
            ResourceError::NotYet {
                section: "s",
                feature: "the thing"
            }
        );
        assert!(refuse_if_present::<u8>(&None, "s", "the thing").is_ok());
        // A wrong type is still an error, and an unknown field is still named.
        assert!(serde_json::from_str::<Body>(r#"{"flag": 1}"#).is_err());
        let e = serde_json::from_str::<Body>(r#"{"bogus": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
    }
}
