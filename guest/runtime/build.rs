//! Hands the linker script of function images to the final link, and refuses to build with
//! flags that would produce something that cannot boot.
//!
//! The script is copied to OUT_DIR as `kiln-runtime.ld` and OUT_DIR is added to the native
//! library search path, which cargo passes on to every crate that depends on this one; the
//! builder (guest/builder) links with `-T kiln-runtime.ld`, which the linker finds there. The
//! guests' rustflags (kiln-guest-flags) are checked as guest/tiny's build script does.

use std::path::PathBuf;

const HOW: &str = "build function images with kiln-guest-builder (`kiln build DIR`), which sets \
                   CARGO_ENCODED_RUSTFLAGS to the guest's flags";

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    std::fs::copy(&script, out.join("kiln-runtime.ld"))
        .unwrap_or_else(|e| panic!("cannot copy {} to OUT_DIR: {e}", script.display()));
    println!("cargo:rustc-link-search=native={}", out.display());

    kiln_guest_flags::check_build_env("kiln-runtime", HOW);
}
