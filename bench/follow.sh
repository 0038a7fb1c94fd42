#!/usr/bin/env bash
# Benchmark: a followed `rsync` order (`--follow`) through deploy-proxy to N agents
# (default 50, each its own deploy-agent process on 127.0.10.x with its own target),
# every agent pulling one MIB MiB file (default 20) from one rsync daemon on loopback,
# against the floor of this method run side by side in the same run: the same N rsyncs
# started by `xargs -P N`. Every run starts from empty targets on both sides.
#
# Target (issue 12, "no timer in the path"): the followed push within 1.1x of raw rsync.
#
# Usage: bench/follow.sh [RUNS] [N] [MIB]        (default 5 runs, 50 agents, 20 MiB)
# BENCH_BIN=DIR takes the binaries from DIR (no build). Needs rsync and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
N=${2:-50}
MIB=${3:-20}
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
exec python3 - "$BIN" "$RUNS" "$N" "$MIB" <<'EOP'
import os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, clean, parallel_rsync

bin_dir, runs, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
work = tempfile.mkdtemp(prefix="deploy-follow-bench-")
procs = Procs()

try:
    shelf = f"{work}/shelf"
    os.makedirs(shelf)
    with open(f"{shelf}/blob", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    rsync_port = procs.rsyncd(work, shelf)

    agents = []
    for i in range(1, n + 1):
        d = f"{work}/agent{i}"
        os.makedirs(f"{d}/target")
        group = {"dest": f"rsync://127.0.0.1:{rsync_port}/shelf/", "src": f"{d}/target/blob",
                 "option[]": "--archive"}
        addrs = procs.agent(bin_dir, d, addr=f"127.0.10.{i}", paths=[f"{d}/target"],
                            sections={"rsync::group::blob": group})
        agents.append((addrs[0], d))
    _, proxy_port = procs.proxy(bin_dir, work, {"fleet": [a for a, _ in agents]},
                                server={"key_cipher": "bench"},
                                client={"concurrency": 1024, "thread_timeout": 600})
    client = [f"{bin_dir}/deploy-client", "--hosts", "127.0.0.1", "--port", proxy_port,
              "--api-key", "bench", "--key-cipher", "bench", "--args", "groups:fleet",
              "--order=rsync", "--options=blob", "--follow", "--thread-timeout", "600",
              "--format", "json", "-q"]

    def followed():
        for _, d in agents:
            clean(f"{d}/target/blob")
            os.makedirs(f"{d}/target/blob")
        subprocess.run(["sync"])
        t = time.perf_counter()
        r = subprocess.run(client, capture_output=True, text=True)
        total = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"followed rsync failed ({r.returncode}):\n{r.stderr[:3000]}\n{r.stdout[:3000]}")
        for _, d in agents:
            if os.path.getsize(f"{d}/target/blob/blob") != mib << 20:
                sys.exit(f"{d}: the file did not arrive whole")
        return total

    print(f"{mib} MiB to {n} agents: `--order=rsync --follow` through deploy-proxy vs "
          f"{n} rsyncs by xargs -P {n}, {runs} runs each, release build")
    print(f"{'run':>4} {'followed':>9} {'raw rsync':>10} {'ratio':>7}")
    rows = []
    for i in range(runs):
        a = followed()
        b = parallel_rsync(f"{work}/raw", n, f"rsync://127.0.0.1:{rsync_port}/shelf/")
        rows.append((a, b))
        print(f"{i + 1:>4} {a:8.2f}s {b:9.2f}s {a / b:6.2f}x")
    a = statistics.median(r[0] for r in rows)
    b = statistics.median(r[1] for r in rows)
    print(f" med {a:8.2f}s {b:9.2f}s {a / b:6.2f}x")
    print(f"target: followed <= 1.1x raw rsync: {'met' if a <= 1.1 * b else 'MISSED'}")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
