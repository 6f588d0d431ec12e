//! Links the guest as a freestanding, static, non-PIE ELF at 1 MiB (link.ld), and refuses
//! to build with flags that would produce something else.
//!
//! The guest is built by tests/build.rs, which passes `--target x86_64-unknown-linux-gnu`
//! and sets CARGO_ENCODED_RUSTFLAGS to exactly the guest's flags (`GUEST_RUSTFLAGS` there):
//! `-C relocation-model=static -C target-feature=-crt-static,-sse,-sse2`. That way the
//! `+crt-static` rustflags of Kiln's .cargo/config.toml do not apply, and the compiler never
//! emits SSE (the instruction emulator of some hosts fails on e.g. `xorps`; see README.md).

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

    // The target features the guest is compiled with, as cargo reports them to build scripts.
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    for forbidden in ["crt-static", "sse", "sse2"] {
        if features.split(',').any(|f| f == forbidden) {
            panic!("kiln-tiny must be built with target feature -{forbidden} (features are {features:?}); {HOW}");
        }
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split('\x1f').collect();
    let static_model = flags
        .windows(2)
        .any(|w| w == ["-C", "relocation-model=static"])
        || flags.contains(&"-Crelocation-model=static");
    if !static_model {
        panic!("kiln-tiny must be built with -C relocation-model=static (rustflags are {flags:?}); {HOW}");
    }

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
