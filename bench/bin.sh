# Sourced by the benchmarks (bench/*.sh): `bench_bin PKG…` sets BIN to the directory of
# the workspace's binaries: $BENCH_BIN when set (no build), else a build of the packages
# PKG… (release; PROFILE=debug: the debug build, to skip a release build) under target/.
# PROFILE is set to what BIN holds (release, debug, or the BENCH_BIN directory).
bench_bin() {
    if [ -n "${BENCH_BIN:-}" ]; then
        BIN=$BENCH_BIN
        PROFILE="binaries of $BENCH_BIN"
        return
    fi
    local args=() p
    for p in "$@"; do args+=(-p "$p"); done
    if [ "${PROFILE:-release}" = debug ]; then
        cargo build --quiet "${args[@]}"
        BIN=$PWD/target/debug
    else
        cargo build --release --quiet "${args[@]}"
        BIN=$PWD/target/release
        PROFILE=release
    fi
}
