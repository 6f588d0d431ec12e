#!/usr/bin/env bash
# Kiln's whole test suite: installs what it needs on first use, then runs every tier.
#
#   ./test.sh          everything: checks, fast tier, slow tier (Linux guest boots), fuzz smoke
#   ./test.sh fast     fast tier only (unit tests, jailer, VMM with the tiny guest)
#   ./test.sh slow     slow tier only (real Linux guest kernels, ~2 min per boot here)
#
# Needs root and /dev/kvm; a test that finds either missing fails and says so.
source "$(dirname "$0")/scripts/lib.sh"
cd "$KILN_ROOT"

tier="${1:-all}"
case "$tier" in
    all|fast|slow) ;;
    *) die "unknown tier '$tier' (expected: all, fast or slow)" ;;
esac

need_root
[ -c /dev/kvm ] || die "/dev/kvm is missing: Kiln runs microVMs under KVM"

# What the host holds before any test: compared with what it holds after them all.
host_before="$(mktemp)"
trap 'rm -f "$host_before"' EXIT
"$KILN_ROOT/scripts/host-leftovers.sh" > "$host_before"

step "checking Debian packages"
apt_ensure curl iproute2 nftables qemu-system-x86 e2fsprogs cpio strace binutils g++
musl_ensure

if [ "$tier" != slow ]; then
    # boto3, the AWS CLI and awslambdaric (pinned) for the Lambda tests, in a cached venv.
    step "Python clients of the Lambda tests (scripts/python-clients.sh)"
    "$KILN_ROOT/scripts/python-clients.sh"

    step "formatting and lints (cargo fmt --check, cargo clippy -D warnings, inside and outside the workspace)"
    cargo fmt --all -- --check || die "cargo fmt --check failed: run cargo fmt --all"
    # The crates outside the workspace (freestanding guests, examples, fuzz targets).
    for manifest in guest/*/Cargo.toml examples/functions/*/Cargo.toml fuzz/Cargo.toml; do
        dir="$(dirname "$manifest")"
        (cd "$dir" && cargo fmt -- --check >/dev/null) \
            || die "cargo fmt --check failed in $dir (outside the workspace): run (cd $dir && cargo fmt)"
    done
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    "$KILN_ROOT/scripts/clippy-outside.sh"
    step "structure (docs/conventions.md): no import circle, no file over 600 lines, crate dependencies as allowed"
    python3 "$KILN_ROOT/scripts/check-structure.py"

    if [ "$tier" = all ]; then
        # Built now, run last (fuzz smoke): a target that no longer compiles fails early.
        KILN_FUZZ_BUILD_ONLY=1 "$KILN_ROOT/scripts/fuzz-smoke.sh"
    fi

    step "fast tier: cargo test --workspace"
    cargo test --workspace
fi

if [ "$tier" != fast ]; then
    step "Linux guest assets (kernel from Debian's linux-source-6.1, initramfs, disk image)"
    "$KILN_ROOT/scripts/assets.sh"

    step "building the workspace binaries the slow tier runs (vmm, jailer, kiln, kiln-init)"
    cargo build --workspace --bins
    step "slow tier: real Linux guest boots (several minutes on a host without hardware virtualization)"
    # The slow tests are #[ignore]d in a plain `cargo test`; here they are run on purpose.
    slow_tests=()
    for f in tests/tests/slow_*.rs; do
        [ -e "$f" ] || continue
        slow_tests+=(--test "$(basename "$f" .rs)")
    done
    [ ${#slow_tests[@]} -gt 0 ] || die "no slow-tier tests found in tests/tests/slow_*.rs"
    cargo test -p kiln-tests "${slow_tests[@]}" -- --ignored --nocapture --test-threads=2
fi

if [ "$tier" = all ]; then
    step "fuzz smoke: every cargo-fuzz target for a bounded time (a crash fails and leaves its reproducer)"
    "$KILN_ROOT/scripts/fuzz-smoke.sh"
fi

step "nothing left on the host: jails, cgroups, network namespaces, mounts, scratch directories (scripts/host-leftovers.sh)"
left="$(comm -13 "$host_before" <("$KILN_ROOT/scripts/host-leftovers.sh"))"
[ -z "$left" ] || die "the tests left this on the host:
$left"

step "all requested tiers passed ($tier)"
