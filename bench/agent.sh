#!/usr/bin/env bash
# Benchmark: wall time of one `deploy-client` process running one order against a local
# agent, over many runs, for `exec` and `status`, over v2 and v1. Prints the median (and
# p90) of each, and the ratio against the original Perl deploy's documented ~1.1 s per
# order (../shared/perf-notes.md: its fan-out engine polls once a second, so that figure is
# a floor, not a measurement here — the original cannot run on this machine).
#
# Usage: bench/agent.sh [RUNS]        (default 50; release build)
# BENCH_BIN=DIR takes the binaries from DIR (no build). Needs rsync and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
BASELINE_MS=1100

. bench/bin.sh
bench_bin deploy-agent deploy-client
exec python3 - "$BIN" "$RUNS" "$BASELINE_MS" <<'EOP'
import os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, clean, jobs_ini, timed

bin_dir, runs, baseline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client = f"{bin_dir}/deploy-client"
work = tempfile.mkdtemp(prefix="deploy-agent-bench-")
procs = Procs()
try:
    # A source tree of 200 small files behind an rsync daemon, for `status` (a dry run).
    os.makedirs(f"{work}/src")
    os.makedirs(f"{work}/target")
    for i in range(1, 201):
        with open(f"{work}/src/f{i}", "wb") as f:
            f.write(os.urandom(i * 100))
    rport = procs.rsyncd(work, f"{work}/src", module="DEST")
    addr = procs.agent(bin_dir, work, key="bench-secret", prefork=2, hosts=["127.0.0.1"],
                       paths=[f"{work}/target"], jobs=jobs_ini(work),
                       server={"legacy_protocol": "on"},
                       sections={"rsync::group::web": {"dest": f"rsync://127.0.0.1:{rport}/DEST",
                                                       "src": f"{work}/target/web"}})[0]
    port = addr.rsplit(":", 1)[1]
    print(f"deploy-client → deploy-agent on 127.0.0.1, {runs} runs each, binaries of {bin_dir}")
    print(f"{'order':8} {'protocol':8} {'median':>10} {'p90':>10} {'vs original (~{:.0f} ms)'.format(baseline):>26}")
    for order, options in (("exec", "service:echo,hello"), ("status", "web")):
        for proto in ("v2", "v1"):
            cmd = [client, "--hosts", "127.0.0.1", "--port", port, "--key-cipher", "bench-secret",
                   "--order", order, "--options", options, "--protocol", proto]
            subprocess.run(cmd, check=True, capture_output=True)  # warm-up
            times = timed(cmd, runs, f"{order}/{proto}")
            med = statistics.median(times)
            p90 = times[int(len(times) * 0.9) - 1]
            print(f"{order:8} {proto:8} {med:8.2f}ms {p90:8.2f}ms {baseline / med:24.0f}x")
finally:
    procs.close()
    clean(work)
EOP
