#!/usr/bin/env bash
# Benchmark: `deploy-client nodes` through deploy-proxy with N agents behind it (default
# 1000): the time of one call (median and p90 of RUNS), the proxy's peak RSS (its
# largest process), and how long one heartbeat round of probes takes (the proxy's own
# `round_ms`). The agents are one deploy-agent listening on N loopback addresses
# (127.0.x.y, `[server] listen[]`), as in bench/fanout.sh. A call reads the heartbeat's
# file and probes nothing, so its time should not grow with N; the round should.
#
# Baseline, in the same run: a per-call probe, `deploy-client --order=health` through
# the same proxy to every agent of the group (what a `nodes` without the heartbeat
# would have to do), median of min(RUNS, 5) calls; the ratio is nodes / probe.
#
# Usage: bench/nodes.sh [RUNS] [N]     (default 20 runs, N = 1000)
#        PROFILE=debug bench/nodes.sh  (the debug build, to skip a release build)
#        BENCH_BIN=DIR bench/nodes.sh (the binaries of DIR, no build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
N=${2:-1000}
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
exec python3 - "$BIN" "$RUNS" "$N" "$PROFILE" <<'EOP'
import json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, loopback, peak_rss_mib, timed

bin_dir, runs, n, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
work = tempfile.mkdtemp(prefix="deploy-bench-nodes-")
procs = Procs()

try:
    addrs = loopback(n)
    agent_addrs = procs.agent(bin_dir, work, n, addr=addrs[0], listen=addrs[1:], prefork=2,
                              server={"max_connections": 4096, "max_connections_per_peer": 4096,
                                      "backlog": 4096})
    proxy, port = procs.proxy(
        bin_dir, work, {"fleet": agent_addrs},
        server={"state_dir": f"{work}/proxy-state", "key_cipher": "benchproxy",
                "max_connections": 4096},
        client={"concurrency": 256, "thread_timeout": 10, "heartbeat": 5})
    cmd = [f"{bin_dir}/deploy-client", "nodes", "--proxy", "127.0.0.1", "--port", port,
           "--api-key", "bench", "--format", "json", "--key-cipher", "benchproxy"]
    # Until every agent is online (the first rounds open the connections).
    deadline = time.time() + 120
    while True:
        r = subprocess.run(cmd, capture_output=True)
        content = json.loads(r.stdout or b"{}").get("127.0.0.1", {}).get("nodes", {}).get("content", {})
        if isinstance(content, dict) and content.get("online") == str(n):
            break
        if time.time() > deadline:
            counts = {k: content.get(k) for k in ("online", "unstable", "offline")} if isinstance(content, dict) else content
            sys.exit(f"not every agent online: {counts} {r.stderr.decode()[:500]}")
        time.sleep(0.5)
    rounds, updated = [], []

    def seen(r):  # a heartbeat round's time, once per round
        c = json.loads(r.stdout)["127.0.0.1"]["nodes"]["content"]
        if c["updated_ms"] not in updated:
            updated.append(c["updated_ms"])
            rounds.append(int(c["round_ms"]))
        time.sleep(0.25)

    times = timed(cmd, runs, "nodes", seen)
    # The same calls with an answer of no node (--state=offline): what the answer's
    # size costs, as against reading the heartbeat's file.
    empty = timed(cmd + ["--state=offline"], runs, "nodes --state=offline")
    probe = ["--hosts", "127.0.0.1", "--port", port, "--api-key", "bench", "--args", "groups:fleet",
             "--key-cipher", "benchproxy", "--order=health", "--format=json"]
    probes = []
    for _ in range(min(runs, 5)):
        t = time.perf_counter()
        r = subprocess.run([f"{bin_dir}/deploy-client", *probe], capture_output=True)
        probes.append((time.perf_counter() - t) * 1000)
        answered = len(json.loads(r.stdout or b"{}"))
        if answered < n:
            sys.exit(f"health probe: {answered} of {n} answered (exit {r.returncode}): {r.stderr.decode()[:1000]}")
    print(f"deploy-client nodes → deploy-proxy, {n} agents behind it, heartbeat 5 s, {runs} calls, {profile} build")
    print(f"  per-call probe (health to all {n} through the proxy): median {statistics.median(probes):.1f} ms; "
          f"ratio nodes / probe {statistics.median(times) / statistics.median(probes):.3f}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  call: median {statistics.median(times):.1f} ms, p90 {times[max(0, int(len(times) * 0.9) - 1)]:.1f} ms")
    print(f"  call answering no node (--state=offline): median {statistics.median(empty):.1f} ms")
    print(f"  heartbeat round ({len(rounds)} seen): median {statistics.median(rounds):.0f} ms")
    print(f"  proxy peak RSS (largest process): {peak_rss_mib(proxy.pid):.1f} MiB")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
