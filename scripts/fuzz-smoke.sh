#!/usr/bin/env bash
# Fuzz smoke (fuzz/README.md): builds every cargo-fuzz target once, then runs each one for a
# bounded time from its checked-in seeds. The first crash (panic, sanitizer report, timeout,
# out-of-memory) stops the run: the reproducer stays in fuzz/artifacts/<target>/ and the
# script exits non-zero with the command that replays it.
#
#   scripts/fuzz-smoke.sh [TARGET...]      every target (cargo fuzz list), or the ones named
#
# Environment:
#   KILN_FUZZ_SECONDS     seconds per target (default 20)
#   KILN_FUZZ_SANITIZER   address | none | auto (default auto: AddressSanitizer when this
#                         toolchain can build it through RUSTC_BOOTSTRAP=1, else none)
#   KILN_FUZZ_TARGET_DIR  cargo's target directory (default fuzz/target)
#   KILN_FUZZ_WORK        scratch corpora and logs (default <target dir>/smoke); the
#                         checked-in seeds in fuzz/corpus/ are only read
#   KILN_FUZZ_JOBS        cargo build jobs (default: cargo's)
source "$(dirname "$0")/lib.sh"

CARGO_FUZZ_VERSION=0.13.2
seconds="${KILN_FUZZ_SECONDS:-20}"
sanitizer="${KILN_FUZZ_SANITIZER:-auto}"
fuzz_dir="$KILN_ROOT/fuzz"
target_dir="${KILN_FUZZ_TARGET_DIR:-$fuzz_dir/target}"
work="${KILN_FUZZ_WORK:-$target_dir/smoke}"

[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "KILN_FUZZ_SECONDS must be a positive number of seconds, not '$seconds'"

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
[ -n "${KILN_FUZZ_JOBS:-}" ] && export CARGO_BUILD_JOBS="$KILN_FUZZ_JOBS"

cd "$fuzz_dir"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || die "no fuzz targets found (cargo fuzz list in $fuzz_dir)"

step "building the fuzz targets (sanitizer: $sanitizer)"
"${fuzz_env[@]}" cargo fuzz build "${fuzz_flags[@]}" \
    || die "the fuzz targets do not build (cargo fuzz build ${fuzz_flags[*]})"

# The dictionary of each target (fuzz/dicts/).
dict_of() {
    case "$1" in
        api_http | mmds_http) echo dicts/http.dict ;;
        vm_config | tenant_profile | seccomp_policy) echo dicts/json.dict ;;
        jailer_args) echo dicts/args.dict ;;
        *) echo "" ;;
    esac
}

mkdir -p "$work/logs"
for t in "${targets[@]}"; do
    step "fuzzing $t for ${seconds}s"
    scratch="$work/corpus/$t"
    mkdir -p "$scratch" "artifacts/$t"
    seeds=()
    [ -d "corpus/$t" ] && seeds=("corpus/$t")
    opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    dict="$(dict_of "$t")"
    [ -n "$dict" ] && opts+=(-dict="$dict")
    log="$work/logs/$t.log"
    before="$(ls -A "artifacts/$t")"
    # New inputs go to the scratch corpus (the first directory); the seeds are only read.
    if "${fuzz_env[@]}" cargo fuzz run "${fuzz_flags[@]}" "$t" "$scratch" "${seeds[@]}" -- \
        "${opts[@]}" >"$log" 2>&1; then
        stats="$(grep -E '^stat::(number_of_executed_units|new_units_added):' "$log" \
            | sed 's/^stat:://' | tr -s ' \n' ' ' || true)"
        printf '    %s: clean (%s)\n' "$t" "${stats% }" >&2
        continue
    fi
    tail -n 60 "$log" >&2
    reproducer=""
    for f in $(ls -At "artifacts/$t"); do
        grep -qxF "$f" <<<"$before" || { reproducer="artifacts/$t/$f"; break; }
    done
    echo >&2
    if [ -n "$reproducer" ]; then
        echo "fuzz target $t failed; reproducer: fuzz/$reproducer (full log: $log)" >&2
        echo "replay it: (cd fuzz && ${fuzz_env[*]:+${fuzz_env[*]} }cargo fuzz run ${fuzz_flags[*]} $t $reproducer)" >&2
    else
        echo "fuzz target $t failed without leaving a reproducer; full log: $log" >&2
    fi
    exit 1
done
step "fuzz smoke passed: ${#targets[@]} targets, ${seconds}s each (sanitizer: $sanitizer)"
