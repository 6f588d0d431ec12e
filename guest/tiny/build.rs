//! Links the guest as a freestanding, static, non-PIE ELF at 1 MiB (link.ld), and refuses
//! to build with flags that would produce something else.
//!
//! The guest is built by tests/build.rs through kiln-guest-builder, which passes `--target
//! x86_64-unknown-linux-gnu` and sets CARGO_ENCODED_RUSTFLAGS to exactly the guests' flags
//! (kiln-guest-flags: `-C relocation-model=static -C
//! target-feature=-crt-static,-sse,-sse2`), which [`kiln_guest_flags::check_build_env`]
//! checks here. That way the `+crt-static` rustflags of Kiln's .cargo/config.toml do not
//! apply, and the compiler never emits SSE (the instruction emulator of some hosts fails on
//! e.g. `xorps`; see README.md).

use std::path::PathBuf;

const HOW: &str = "build it through tests/build.rs (`cargo build -p kiln-tests`), which sets \
                   CARGO_ENCODED_RUSTFLAGS to the guest's flags";

fn main() {
    let dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let script = dir.join("link.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    kiln_guest_flags::check_build_env("kiln-tiny", HOW);

    for arg in [
        format!("-T{}", script.display()),
        "-nostdlib".into(),
        "-static".into(),
        "-Wl,--build-id=none".into(),
        "-Wl,-z,norelro".into(),
        "-Wl,--no-eh-frame-hdr".into(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
