#!/usr/bin/env bash
# `cargo clippy -D warnings` on the crates outside the workspace (test.sh runs it after the
# workspace's): the freestanding guests and the function runtime with the flags they are built
# with (guest/flags: static relocation, no SSE; for the host's gnu target, run from / so that
# the workspace's .cargo/config.toml stays out), the Linux functions as the host programs they
# are, and the fuzz crate. One target directory, target/clippy-outside, keeps later runs quick.
#
#   scripts/clippy-outside.sh
source "$(dirname "$0")/lib.sh"
cd "$KILN_ROOT"

out="$KILN_ROOT/target/clippy-outside"
# guest/flags' RUSTFLAGS (guest/flags/src/lib.rs, which the builder builds with and the
# guests' build scripts enforce) without the link arguments: nothing is linked.
guest_flags=$'-C\x1frelocation-model=static\x1f-C\x1ftarget-feature=-crt-static,-sse,-sse2'

# clippy_in MANIFEST [ARGS...]: clippy on one crate, from / (outside the workspace's config).
# Its output is shown only when it fails: every freestanding crate repeats rustc's warning
# that disabling SSE2 is being phased out (guest/tiny/README.md, "No SSE").
clippy_in() {
    local manifest="$1"
    shift
    mkdir -p "$out"
    local log="$out/last.log"
    if ! (cd / && cargo clippy --quiet --manifest-path "$KILN_ROOT/$manifest" --target-dir "$out" "$@" -- -D warnings) >"$log" 2>&1; then
        cat "$log" >&2
        die "cargo clippy failed in $(dirname "$manifest") (outside the workspace)"
    fi
}

freestanding=(guest/boot guest/virtio guest/mem guest/runtime guest/tiny)
linux=(fuzz)
for manifest in examples/functions/*/Cargo.toml; do
    dir="$(dirname "$manifest")"
    [ -f "$dir/kiln.json" ] || die "$dir has a Cargo.toml but no kiln.json: is it a function?"
    # A function's kiln.json says "kind": "linux" for an ordinary static executable;
    # anything else runs on the freestanding runtime.
    if grep -Eq '"kind"[[:space:]]*:[[:space:]]*"linux"' "$dir/kiln.json"; then
        linux+=("$dir")
    else
        freestanding+=("$dir")
    fi
done

for dir in "${freestanding[@]}"; do
    # No --all-targets: a no_std crate has no test harness. KILN_FUNCTION_NAME as the builder
    # sets it for a function (the runtime reads it at build time).
    KILN_FUNCTION_NAME="$(basename "$dir")" CARGO_ENCODED_RUSTFLAGS="$guest_flags" \
        clippy_in "$dir/Cargo.toml" --release --target x86_64-unknown-linux-gnu
done
for dir in "${linux[@]}"; do
    clippy_in "$dir/Cargo.toml" --all-targets
done
