#!/usr/bin/env bash
# Benchmark: peak memory (RSS) of deploy-client on SSH hosts, from the kernel's count
# for the child (getrusage RUSAGE_CHILDREN ru_maxrss, the VmHWM of the process):
#   * 10 hosts × 10,000 lines of 64 bytes, live (`lines` format), and with --grouped
#     (target ≤ 32 MiB each);
#   * `true` on 100 hosts (target ≤ 20 MiB).
# The hosts are sshd instances on loopback (bench/sshfleet.py). Output goes to
# /dev/null. Each case runs RUNS times; the largest peak is reported.
#
# Usage: bench/ssh-memory.sh [RUNS]      (default 3)
# BIN=path/to/deploy-client to measure another build (default: a release build).
# Needs root (sshd) and /usr/sbin/sshd.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p deploy-client
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/deploy-client"
fi
exec python3 - "$BIN" "$RUNS" <<'EOP'
import os, resource, subprocess, sys
sys.path.insert(0, "bench")
from sshfleet import Fleet

client, runs = sys.argv[1], int(sys.argv[2])
MIB = 1024  # ru_maxrss is in KiB
LINES = "seq -f '%063g' 1 10000"
cases = [
    ("10 hosts x 10,000 lines, live", 10, ["--order=run", "--", LINES], 32),
    ("10 hosts x 10,000 lines, --grouped", 10, ["--order=run", "--grouped", "--", LINES], 32),
    ("true on 100 hosts", 100, ["--order=run", "--", "true"], 20),
]
fleet = Fleet(100)
try:
    print(f"peak RSS of deploy-client ({client}), largest of {runs} runs")
    ok = True
    for name, n, args, target in cases:
        peaks = []
        for _ in range(runs):
            pid = os.fork()
            if pid == 0:
                fd = os.open(os.devnull, os.O_RDWR)
                for i in (0, 1):
                    os.dup2(fd, i)
                os.execve(client, [client, "--hosts", fleet.hosts(n)] + args, fleet.env)
            _, status, usage = os.wait4(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"{name}: deploy-client exited with {os.waitstatus_to_exitcode(status)}")
            peaks.append(usage.ru_maxrss / MIB)
        peak = max(peaks)
        ok &= peak <= target
        print(f"{name:<40} {peak:7.1f} MiB   (target <= {target} MiB){'' if peak <= target else '  OVER'}")
    print("all within target" if ok else "NOT all within target")
finally:
    fleet.close()
EOP
