#!/usr/bin/env bash
# Fuzz smoke (fuzz/README.md): builds every cargo-fuzz target once, then runs each one for a
# bounded time from its checked-in corpus (fuzz/corpus/<target>: hand-made seeds and the
# minimised corpus of earlier runs), a few targets at a time. The first crash (panic,
# sanitizer report, timeout, out-of-memory) fails the run: the reproducer stays in
# fuzz/artifacts/<target>/ and the script exits non-zero with the command that replays it.
#
#   scripts/fuzz-smoke.sh [TARGET...]      every target (cargo fuzz list), or the ones named
#
# Environment:
#   KILN_FUZZ_SECONDS     seconds per target (default 15)
#   KILN_FUZZ_PARALLEL    targets fuzzed at once (default 2: the machine's two cores)
#   KILN_FUZZ_SANITIZER   address | none | auto (default auto: AddressSanitizer when this
#                         toolchain can build it through RUSTC_BOOTSTRAP=1, else none)
#   KILN_FUZZ_TARGET_DIR  cargo's target directory (default fuzz/target)
#   KILN_FUZZ_WORK        scratch corpora and logs (default <target dir>/smoke); the
#                         checked-in corpus in fuzz/corpus/ is only read
#   KILN_FUZZ_JOBS        cargo build jobs (default: cargo's)
#   KILN_FUZZ_BUILD_ONLY  1: build the targets and stop (test.sh does this first, so that a
#                         target that no longer compiles fails the run in minutes, not last)
source "$(dirname "$0")/lib.sh"

seconds="${KILN_FUZZ_SECONDS:-15}"
parallel="${KILN_FUZZ_PARALLEL:-2}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "KILN_FUZZ_SECONDS must be a positive number of seconds, not '$seconds'"
[[ "$parallel" =~ ^[1-9][0-9]*$ ]] || die "KILN_FUZZ_PARALLEL must be a positive number, not '$parallel'"
source "$(dirname "$0")/fuzz-lib.sh"
work="${KILN_FUZZ_WORK:-$target_dir/smoke}"
[ -n "${KILN_FUZZ_JOBS:-}" ] && export CARGO_BUILD_JOBS="$KILN_FUZZ_JOBS"

mapfile -t targets < <(fuzz_targets "$@")
[ ${#targets[@]} -gt 0 ] || die "no fuzz targets found (cargo fuzz list in $fuzz_dir)"
fuzz_build
if [ "${KILN_FUZZ_BUILD_ONLY:-0}" = 1 ]; then
    step "fuzz targets built: ${#targets[@]}"
    exit 0
fi
cd "$fuzz_dir"

# fuzz_one TARGET: runs it (the binary cargo fuzz built) for $seconds; its exit status is
# libFuzzer's. New corpus entries go to the scratch corpus (the first directory); the
# checked-in one is only read.
fuzz_one() {
    local t="$1"
    local scratch="$work/corpus/$t"
    mkdir -p "$scratch" "artifacts/$t"
    local corpus=()
    [ -d "corpus/$t" ] && corpus=("corpus/$t")
    local opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
                -artifact_prefix="artifacts/$t/")
    local dict
    dict="$(dict_of "$t")"
    [ -n "$dict" ] && opts+=(-dict="$dict")
    "$binaries/$t" "${opts[@]}" "$scratch" "${corpus[@]}" >"$work/logs/$t.log" 2>&1
}

# report TARGET STATUS: a clean run's line, or the failure's log, reproducer and replay
# command (and the script's end).
report() {
    local t="$1" status="$2"
    local log="$work/logs/$t.log"
    if [ "$status" = 0 ]; then
        local stats
        stats="$(grep -E '^stat::(number_of_executed_units|new_units_added):' "$log" \
            | sed 's/^stat:://' | tr -s ' \n' ' ' || true)"
        local cov
        cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)"
        printf '    %s: clean (%s; %s)\n' "$t" "${stats% }" "$cov" >&2
        return 0
    fi
    tail -n 60 "$log" >&2
    local reproducer
    reproducer="$(grep -oE "artifacts/$t/(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+" "$log" \
        | tail -n 1 || true)"
    echo >&2
    if [ -n "$reproducer" ]; then
        echo "fuzz target $t failed; reproducer: fuzz/$reproducer (full log: $log)" >&2
        echo "replay it: (cd fuzz && ${fuzz_env[*]:+${fuzz_env[*]} }cargo fuzz run ${fuzz_flags[*]} $t $reproducer)" >&2
    else
        echo "fuzz target $t failed without leaving a reproducer; full log: $log" >&2
    fi
    return 1
}

mkdir -p "$work/logs"
step "fuzzing ${#targets[@]} targets for ${seconds}s each, $parallel at a time"
declare -A running=()
failed=0
for t in "${targets[@]}"; do
    [ -x "$binaries/$t" ] || die "no fuzz target $t (cargo fuzz list)"
    while [ ${#running[@]} -ge "$parallel" ]; do
        status=0
        wait -n -p done_pid || status=$?
        done_t="${running[$done_pid]}"
        unset "running[$done_pid]"
        report "$done_t" "$status" || { failed=1; break 2; }
    done
    fuzz_one "$t" &
    running[$!]="$t"
done
# The rest (or, after a failure, the others stop at their time limit).
for pid in "${!running[@]}"; do
    status=0
    wait "$pid" || status=$?
    if [ "$failed" = 0 ]; then
        report "${running[$pid]}" "$status" || failed=1
    fi
done
[ "$failed" = 0 ] || exit 1
step "fuzz smoke passed: ${#targets[@]} targets, ${seconds}s each, $parallel at a time (sanitizer: $sanitizer)"
