#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets of fuzz/ (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS: how long each target is fuzzed (default 60; 0 only replays the regressions).
# TARGET:  the targets to run (default: every target `cargo fuzz list` prints, so a new
#          [[bin]] in fuzz/Cargo.toml is picked up without editing this script).
#
# For each target, the inputs in fuzz/regressions/<target>/ are replayed first (a known
# crash fails at once, without fuzzing), then the target is fuzzed for SECONDS starting
# from fuzz/corpus/<target>/ and the regressions. Every target is run; the script exits
# 1 if any crashed, failed an assertion, leaked, timed out or ran out of memory (the end
# of its log is printed and the failing input is in fuzz/artifacts/<target>/), and 2 on
# a usage or set-up error.
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz
# with `cargo install cargo-fuzz --locked` if it is missing.
#
# Environment: FUZZ_JOBS (parallel build jobs, default cargo's), FUZZ_RSS_MB (memory
# limit per target, default 2048), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
}

seconds=60
if [ $# -gt 0 ]; then
    case "$1" in
        -h | --help) usage ;;
        *[!0-9]* | '') ;;
        *)
            seconds=$1
            shift
            ;;
    esac
fi

cd "$(dirname "$0")/../fuzz"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mapfile -t all < <(cargo +nightly fuzz list)
if [ ${#all[@]} -eq 0 ]; then
    echo "fuzz.sh: cargo fuzz list printed no targets" >&2
    exit 2
fi
if [ $# -gt 0 ]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        if ! printf '%s\n' "${all[@]}" | grep -qx -- "$t"; then
            echo "fuzz.sh: unknown target '$t' (targets: ${all[*]})" >&2
            exit 2
        fi
    done
else
    targets=("${all[@]}")
fi

build=(cargo +nightly fuzz build)
[ -n "${FUZZ_JOBS:-}" ] && build+=(--jobs "$FUZZ_JOBS")
# One build of every target (release, with debug assertions and ASan, cargo-fuzz's
# defaults), so that a target that no longer compiles fails here, not later.
echo "fuzz.sh: building ${#all[@]} targets" >&2
start=$SECONDS
"${build[@]}"
echo "fuzz.sh: built in $((SECONDS - start)) s" >&2

rss=${FUZZ_RSS_MB:-2048}
read -r -a extra <<<"${FUZZ_ARGS:-}"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Runs `cargo fuzz run TARGET ARGS…` with its (long) output in a log file; prints the
# summary lines, or the end of the log when the run fails.
run() {
    local target=$1 log="$logs/$1.log"
    shift
    if cargo +nightly fuzz run "$target" "$@" >"$log" 2>&1; then
        grep -E '^Done [0-9]+ runs|^stat::(number_of_executed_units|peak_rss_mb)' "$log" |
            sed "s/^/fuzz.sh: $target: /" >&2 || true
        return 0
    fi
    grep -m 3 -A 3 'panicked at' "$log" >&2 || true
    tail -n 40 "$log" >&2
    return 1
}

failed=()
for t in "${targets[@]}"; do
    regressions="regressions/$t"
    if [ -d "$regressions" ] && [ -n "$(ls -A "$regressions")" ]; then
        echo "fuzz.sh: $t: replaying $regressions/" >&2
        # -runs=0 with a directory runs every input once and fuzzes nothing.
        if ! run "$t" "$regressions" -- -runs=0 -rss_limit_mb="$rss" "${extra[@]}"; then
            failed+=("$t (regression)")
            continue
        fi
    fi
    [ "$seconds" -eq 0 ] && continue
    echo "fuzz.sh: $t: fuzzing for $seconds s" >&2
    mkdir -p "corpus/$t"
    seeds=("corpus/$t")
    [ -d "$regressions" ] && seeds+=("$regressions")
    # The first directory is the working corpus (new inputs go there); the others are
    # read only. -print_final_stats gives the execution count.
    if ! run "$t" "${seeds[@]}" -- -max_total_time="$seconds" -rss_limit_mb="$rss" \
        -timeout=10 -print_final_stats=1 "${extra[@]}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets passed" >&2
