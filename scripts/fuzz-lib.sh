# Shared set-up of the fuzz scripts (fuzz-smoke.sh, fuzz-long.sh). Source it after lib.sh;
# do not run it. It reads KILN_FUZZ_SANITIZER and KILN_FUZZ_TARGET_DIR, installs cargo-fuzz
# when missing, and sets:
#   fuzz_dir, target_dir, binaries   where the fuzz crate, cargo's output and the built targets are
#   sanitizer                        address or none (auto resolved)
#   fuzz_env, fuzz_flags             how to call `cargo fuzz` with that sanitizer
# and defines fuzz_build, fuzz_targets and dict_of.

CARGO_FUZZ_VERSION=0.13.2
fuzz_dir="$KILN_ROOT/fuzz"
target_dir="${KILN_FUZZ_TARGET_DIR:-$fuzz_dir/target}"
binaries="$target_dir/x86_64-unknown-linux-gnu/release"
sanitizer="${KILN_FUZZ_SANITIZER:-auto}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz $CARGO_FUZZ_VERSION (once; a few minutes)"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" \
        || die "cannot install cargo-fuzz from crates.io"
fi

# AddressSanitizer needs -Zsanitizer, a nightly flag that the stable compiler accepts with
# RUSTC_BOOTSTRAP=1; its runtime ships with the stable toolchain on x86_64 Linux.
asan_works() {
    local probe
    probe="$(mktemp -d)"
    echo 'fn main() {}' >"$probe/p.rs"
    RUSTC_BOOTSTRAP=1 rustc -Zsanitizer=address -o "$probe/p" "$probe/p.rs" >/dev/null 2>&1 \
        && "$probe/p"
    local ok=$?
    rm -rf "$probe"
    return $ok
}
case "$sanitizer" in
    auto) if asan_works; then sanitizer=address; else sanitizer=none; fi ;;
    address | none) ;;
    *) die "KILN_FUZZ_SANITIZER must be address, none or auto, not '$sanitizer'" ;;
esac
fuzz_env=()
if [ "$sanitizer" = address ]; then
    fuzz_env=(env RUSTC_BOOTSTRAP=1)
fi
fuzz_flags=(--sanitizer "$sanitizer" --target-dir "$target_dir")

# fuzz_build: builds every target (cargo fuzz build) with the sanitizer chosen above.
fuzz_build() {
    step "building the fuzz targets (sanitizer: $sanitizer)"
    (cd "$fuzz_dir" && "${fuzz_env[@]}" cargo fuzz build "${fuzz_flags[@]}") \
        || die "the fuzz targets do not build (cargo fuzz build ${fuzz_flags[*]})"
}

# fuzz_targets [TARGET...]: the targets named, or every one (cargo fuzz list), one a line.
fuzz_targets() {
    if [ $# -gt 0 ]; then
        printf '%s\n' "$@"
    else
        (cd "$fuzz_dir" && cargo fuzz list)
    fi
}

# dict_of TARGET: the target's dictionary (relative to fuzz/), or nothing.
dict_of() {
    case "$1" in
        api_http | worker_http | runtime_api | mmds_http) echo dicts/http.dict ;;
        vm_config | tenant_profile | seccomp_policy | function_manifest) echo dicts/json.dict ;;
        jailer_args) echo dicts/args.dict ;;
        *) echo "" ;;
    esac
}
