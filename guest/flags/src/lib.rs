//! The compiler flags of Kiln's freestanding guests (guest/tiny, guest/runtime and every
//! function image), defined once.
//!
//! kiln-guest-builder (guest/builder) builds a guest with exactly [`RUSTFLAGS`] (plus link
//! arguments) as `CARGO_ENCODED_RUSTFLAGS`, and each guest crate's build script calls
//! [`check_build_env`], which refuses to build with anything else:
//!
//! * `-C relocation-model=static`: the guests are linked at a fixed address (no PIE);
//! * `-C target-feature=-crt-static,-sse,-sse2`: no libc start-up code, and no SSE — the
//!   instruction emulator of some hosts fails on SSE arithmetic such as `xorps`, which LLVM
//!   uses to zero memory (guest/tiny/README.md). rustc warns that disabling SSE2 is being
//!   phased out for this target; the README says what to do when it becomes an error.

/// Exactly the rustflags of freestanding guests.
pub const RUSTFLAGS: &[&str] = &[
    "-C",
    "relocation-model=static",
    "-C",
    "target-feature=-crt-static,-sse,-sse2",
];

/// The target features [`RUSTFLAGS`] turns off, which a guest's build must not have.
pub const DISABLED_FEATURES: &[&str] = &["crt-static", "sse", "sse2"];

/// The relocation model of [`RUSTFLAGS`].
pub const RELOCATION_MODEL: &str = "relocation-model=static";

/// Panics (failing the build) unless the crate is being built with the guests' flags, as cargo
/// reports them to build scripts (`CARGO_CFG_TARGET_FEATURE`, `CARGO_ENCODED_RUSTFLAGS`).
/// `package` names the crate in the message, `how` says how to build it instead.
pub fn check_build_env(package: &str, how: &str) {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if let Err(problem) = check(&features, &rustflags) {
        panic!("{package} must be built with {problem}; {how}");
    }
}

/// Checks the target features in effect (comma-separated) and the encoded rustflags
/// (separated by 0x1f); the error says what is missing and what was found.
pub fn check(features: &str, encoded_rustflags: &str) -> Result<(), String> {
    for disabled in DISABLED_FEATURES {
        if features.split(',').any(|f| f == *disabled) {
            return Err(format!(
                "target feature -{disabled} (features are {features:?})"
            ));
        }
    }
    let flags: Vec<&str> = encoded_rustflags.split('\x1f').collect();
    let model = ["-C", RELOCATION_MODEL];
    let joined = format!("-C{RELOCATION_MODEL}");
    if !flags.windows(2).any(|w| w == model) && !flags.contains(&joined.as_str()) {
        return Err(format!("-C {RELOCATION_MODEL} (rustflags are {flags:?})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(flags: &[&str]) -> String {
        flags.join("\x1f")
    }

    #[test]
    fn the_flags_name_every_disabled_feature_and_the_relocation_model() {
        let features = RUSTFLAGS
            .iter()
            .find_map(|f| f.strip_prefix("target-feature="))
            .expect("RUSTFLAGS sets target features");
        let mut disabled: Vec<&str> = features
            .split(',')
            .map(|f| f.strip_prefix('-').expect("every feature is turned off"))
            .collect();
        disabled.sort_unstable();
        let mut expected = DISABLED_FEATURES.to_vec();
        expected.sort_unstable();
        assert_eq!(disabled, expected);
        assert!(RUSTFLAGS.windows(2).any(|w| w == ["-C", RELOCATION_MODEL]));
    }

    #[test]
    fn the_guest_flags_pass() {
        assert_eq!(check("fxsr,x87", &encoded(RUSTFLAGS)), Ok(()));
        assert_eq!(
            check("fxsr", "-Crelocation-model=static\x1f-Ctarget-feature=-sse"),
            Ok(())
        );
    }

    #[test]
    fn an_enabled_feature_is_refused_by_name() {
        let e = check("fxsr,sse,x87", &encoded(RUSTFLAGS)).unwrap_err();
        assert_eq!(e, r#"target feature -sse (features are "fxsr,sse,x87")"#);
        let e = check("crt-static", &encoded(RUSTFLAGS)).unwrap_err();
        assert!(e.starts_with("target feature -crt-static "), "{e}");
    }

    #[test]
    fn another_relocation_model_is_refused() {
        let e = check("fxsr", &encoded(&["-C", "relocation-model=pic"])).unwrap_err();
        assert_eq!(
            e,
            r#"-C relocation-model=static (rustflags are ["-C", "relocation-model=pic"])"#
        );
        assert!(check("fxsr", "").is_err());
    }
}
