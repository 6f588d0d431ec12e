#!/usr/bin/env bash
# Long fuzzing (fuzz/README.md, "Fuzzing longer"): runs targets ONE AT A TIME, under nice, for
# KILN_FUZZ_SECONDS each, from the checked-in corpus (fuzz/corpus/<target>) into a fresh
# scratch corpus; then, when the run was clean, merges what it found back into
# fuzz/corpus/<target> in minimised form: libFuzzer's -merge=1 into a fresh directory that
# starts with the hand-made seeds (seed-*), so that only the inputs that cover an edge
# nothing before them covers are kept.
# A crash leaves its reproducer in fuzz/artifacts/<target>/, skips the merge, and fails the
# script once every target has run.
#
#   scripts/fuzz-long.sh [TARGET...]      every target (cargo fuzz list), or the ones named
#
# For each target it prints what libFuzzer reported at KILN_FUZZ_EARLY seconds and at the end
# (cov: and ft:), the executions per second, the corpus files before and after the merge.
#
# Environment:
#   KILN_FUZZ_SECONDS     seconds per target (default 240)
#   KILN_FUZZ_EARLY       the earlier moment whose coverage is reported too (default 20)
#   KILN_FUZZ_MERGE       1 (default): merge back into fuzz/corpus/; 0: leave it alone
#   KILN_FUZZ_NICE        the fuzzers' nice level (default 10)
#   KILN_FUZZ_SANITIZER   address | none | auto (default auto, as in fuzz-smoke.sh)
#   KILN_FUZZ_TARGET_DIR  cargo's target directory (default fuzz/target)
#   KILN_FUZZ_WORK        scratch corpora and logs (default <target dir>/long)
source "$(dirname "$0")/lib.sh"

seconds="${KILN_FUZZ_SECONDS:-240}"
early="${KILN_FUZZ_EARLY:-20}"
merge="${KILN_FUZZ_MERGE:-1}"
niceness="${KILN_FUZZ_NICE:-10}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "KILN_FUZZ_SECONDS must be a positive number of seconds, not '$seconds'"
[[ "$early" =~ ^[0-9]+$ ]] || die "KILN_FUZZ_EARLY must be a number of seconds, not '$early'"
[[ "$merge" =~ ^[01]$ ]] || die "KILN_FUZZ_MERGE must be 0 or 1, not '$merge'"
[[ "$niceness" =~ ^[0-9]+$ ]] || die "KILN_FUZZ_NICE must be a nice level (0-19), not '$niceness'"
source "$(dirname "$0")/fuzz-lib.sh"
work="${KILN_FUZZ_WORK:-$target_dir/long}"

mapfile -t targets < <(fuzz_targets "$@")
[ ${#targets[@]} -gt 0 ] || die "no fuzz targets found (cargo fuzz list in $fuzz_dir)"
fuzz_build
cd "$fuzz_dir"
mkdir -p "$work/logs"

# coverage LOG [SECONDS]: "cov: N ft: M" of the last status line of LOG (each line prefixed
# by the second it was printed at), up to SECONDS if given.
coverage() {
    awk -v until="${2:-}" '
        (until == "" || $1 <= until + 0) && match($0, /cov: [0-9]+ ft: [0-9]+/) {
            last = substr($0, RSTART, RLENGTH)
        }
        END { print last }' "$1"
}

failed=()
for t in "${targets[@]}"; do
    [ -x "$binaries/$t" ] || die "no fuzz target $t (cargo fuzz list)"
    scratch="$work/corpus/$t"
    log="$work/logs/$t.log"
    rm -rf "$scratch" "$work/merged/$t"
    mkdir -p "$scratch" "artifacts/$t" "corpus/$t"
    opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
          -artifact_prefix="artifacts/$t/")
    dict="$(dict_of "$t")"
    [ -n "$dict" ] && opts+=(-dict="$dict")
    before="$(find "corpus/$t" -type f | wc -l)"
    step "$t: ${seconds}s from corpus/$t ($before files)"
    # Every line of libFuzzer's output gets the second it was printed at.
    set +e
    nice -n "$niceness" "$binaries/$t" "${opts[@]}" "$scratch" "corpus/$t" 2>&1 \
        | { SECONDS=0; while IFS= read -r line; do printf '%s %s\n' "$SECONDS" "$line"; done; } \
        >"$log"
    status="${PIPESTATUS[0]}"
    set -e
    execs="$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)"
    summary="cov at ${early}s: $(coverage "$log" "$early"); at the end: $(coverage "$log"); exec/s: ${execs:-?}"
    if [ "$status" != 0 ]; then
        tail -n 40 "$log" >&2
        reproducer="$(grep -oE "artifacts/$t/(crash|timeout|oom|leak|slow-unit)-[0-9a-f]+" "$log" \
            | tail -n 1 || true)"
        echo "$t: FAILED ($summary); reproducer: fuzz/${reproducer:-(none)}; log: $log" >&2
        failed+=("$t")
        continue
    fi
    if [ "$merge" = 1 ]; then
        merged="$work/merged/$t"
        mkdir -p "$merged"
        find "corpus/$t" -maxdepth 1 -type f -name 'seed-*' -exec cp -t "$merged" {} +
        # -use_counters=0: an input is kept for an edge it covers first, not for another hit
        # count of an edge already covered (a tenth of the files, the same edges).
        nice -n "$niceness" "$binaries/$t" -merge=1 -use_counters=0 -timeout=10 -rss_limit_mb=2048 \
            "$merged" "corpus/$t" "$scratch" >"$work/logs/$t.merge.log" 2>&1 \
            || die "$t: merging the corpus failed (log: $work/logs/$t.merge.log)"
        rm -rf "corpus/$t"
        mv "$merged" "corpus/$t"
    fi
    after="$(find "corpus/$t" -type f | wc -l)"
    echo "$t: clean ($summary); corpus: $before -> $after files, $(du -sh "corpus/$t" | cut -f1)" >&2
done
if [ ${#failed[@]} -gt 0 ]; then
    die "failed: ${failed[*]} (reproducers in fuzz/artifacts/<target>/)"
fi
step "fuzzed ${#targets[@]} targets for ${seconds}s each, one at a time (sanitizer: $sanitizer)"
