#!/usr/bin/env bash
# Benchmark: a fleet-wide rollout through deploy-proxy. A 50 MiB artifact (tar.gz of
# random data, from a file:// src) to N agents (default 50), each its own deploy-agent
# process on 127.0.9.x with its own dest ($DEST), in two phases: time until every
# agent has switched, and the switch skew (latest minus earliest `switched_at` across
# the agents). Baseline, run side by side in the same run: rsync alone moving the same
# bytes to the same N destinations (N rsyncs from one rsync daemon on loopback,
# `xargs -P N`). Every run starts from empty destinations on both sides.
#
# Targets (issue 10): skew <= 50 ms; total within 1.5x of rsync.
#
# Usage: bench/rollout.sh [RUNS] [N] [MIB]      (default 3 runs, 50 agents, 50 MiB)
# BENCH_BIN=DIR takes the binaries from DIR (no build). Needs rsync and python3. Uses about N x MIB x 2 of disk at its peak (one side at a
# time), under ${TMPDIR:-/tmp}.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=${2:-50}
MIB=${3:-50}
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
exec python3 - "$BIN" "$RUNS" "$N" "$MIB" <<'EOP'
import json, os, re, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, clean, parallel_rsync

bin_dir, runs, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
work = tempfile.mkdtemp(prefix="deploy-rollout-bench-")
procs = Procs()

try:
    # The artifact: random bytes (incompressible, so the tar.gz is ~MIB MiB) in a tar.gz.
    shelf = f"{work}/shelf"
    os.makedirs(f"{work}/data")
    os.makedirs(shelf)
    with open(f"{work}/data/blob", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    subprocess.run(["tar", "-czf", f"{shelf}/app.tar.gz", "-C", f"{work}/data", "."], check=True)
    clean(f"{work}/data")
    size = os.path.getsize(f"{shelf}/app.tar.gz")
    sha = subprocess.run(["sha256sum", f"{shelf}/app.tar.gz"], capture_output=True, check=True,
                         text=True).stdout.split()[0]
    with open(f"{shelf}/app.yml", "w") as f:
        f.write(f"src: file://{shelf}/app.tar.gz\nchecksum: {sha}\n"
                "dest: {{ must_env \"DEST\" }}\nsync_strategy: release\nkeep: 2\n")

    # N agents, one process each (each has its own DEST).
    agents = []
    for i in range(1, n + 1):
        d = f"{work}/agent{i}"
        os.makedirs(f"{d}/dest")
        addrs = procs.agent(bin_dir, d, env=dict(os.environ, DEST=f"{d}/dest/app"),
                            addr=f"127.0.9.{i}", paths=[f"{d}/dest"], server={"allow_deploy": "on"},
                            sections={"deploy": {"manifest[]": f"file://{shelf}/"}})
        agents.append((addrs[0], d))
    _, proxy_port = procs.proxy(bin_dir, work, {"fleet": [a for a, _ in agents]},
                                names={"bench": "bench"}, server={"key_cipher": "bench"},
                                client={"concurrency": 1024, "thread_timeout": 600})

    # The rsync daemon, serving the shelf.
    rsync_port = procs.rsyncd(work, shelf)

    client = [f"{bin_dir}/deploy-client", "--hosts", "127.0.0.1", "--port", proxy_port,
              "--api-key", "bench", "--key-cipher", "bench", "--args", "groups:fleet",
              "--order=deploy", "--manifest", f"file://{shelf}/app.yml", "--thread-timeout", "600",
              "--format", "json"]

    def rollout():
        for _, d in agents:
            clean(f"{d}/dest/app")
            clean(f"{d}/dest/app.releases")
        subprocess.run(["sync"])
        t = time.perf_counter()
        r = subprocess.run(client, capture_output=True, text=True)
        total = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"rollout failed ({r.returncode}):\n{r.stderr[:3000]}\n{r.stdout[:3000]}")
        doc = json.loads(r.stdout)
        at = [int(rec["deploy"]["content"]["switched_at"]) for rec in doc.values()]
        if len(at) != n:
            sys.exit(f"{len(at)} of {n} agents switched:\n{r.stderr}")
        m = re.search(r"prepared in ([\d.]+)s, \d+ switched in (\d+) ms", r.stderr)
        return total, max(at) - min(at), float(m.group(1)), int(m.group(2))

    print(f"rollout of a {size / (1 << 20):.1f} MiB tar.gz to {n} agents through deploy-proxy "
          f"vs {n} rsyncs of the same file, {runs} runs each, release build")
    print(f"{'run':>4} {'rollout':>9} {'prepare':>9} {'switch':>8} {'skew':>7} {'rsync':>9} {'ratio':>7}")
    rows = []
    for i in range(runs):
        total, skew, prep, sw = rollout()
        base = parallel_rsync(f"{work}/rsync", n,
                              f"rsync://127.0.0.1:{rsync_port}/shelf/app.tar.gz")
        rows.append((total, skew, prep, sw, base))
        print(f"{i + 1:>4} {total:8.2f}s {prep:8.2f}s {sw:6d}ms {skew:5d}ms {base:8.2f}s {total / base:6.2f}x")
    med = lambda k: statistics.median(r[k] for r in rows)
    total, skew, base = med(0), med(1), med(4)
    print(f" med {total:8.2f}s {med(2):8.2f}s {med(3):6.0f}ms {skew:5.0f}ms {base:8.2f}s {total / base:6.2f}x")
    print(f"targets: skew <= 50 ms: {'met' if skew <= 50 else 'MISSED'}; "
          f"total <= 1.5x rsync: {'met' if total <= 1.5 * base else 'MISSED'}")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
