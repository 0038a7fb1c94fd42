#!/usr/bin/env bash
# Benchmark (not a test): `exec` to N endpoints (default 1000) through deploy-proxy,
# over NATS beside the same over direct TCP, in one run: time of one call (median of
# RUNS) and each proxy's peak RSS, and the ratio NATS / TCP (target ≤ 1.5×).
#
# How the endpoints are made (one process per endpoint would be N agents):
#   TCP:  one deploy-agent listening on N loopback addresses (127.0.x.y, listen[]),
#         as bench/nodes.sh does;
#   NATS: one deploy-agent with tcp = off, [nats] name = e0 and alias[] = e1…e(N-1),
#         on one local nats-server; every endpoint is its own subject, its own sealed
#         order and reply stream.
# Two proxies, one per path (so that each one's RSS is its own), both with
# concurrency = 256; the groups are plain (no nats_publish): N sealed publishes, the
# same work shape as N TCP orders.
#
# Usage: bench/nats.sh [RUNS] [N]     (default 5 runs, N = 1000)
#        PROFILE=debug bench/nats.sh  (the debug build, to skip a release build)
#        BENCH_BIN=DIR bench/nats.sh (the binaries of DIR, no build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
N=${2:-1000}
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
exec python3 - "$BIN" "$RUNS" "$N" "$PROFILE" "$NATS_SERVER" <<'EOP'
import json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, jobs_ini, loopback, peak_rss_mib

bin_dir, runs, n, profile, nats_server = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
work = tempfile.mkdtemp(prefix="deploy-bench-nats-")
procs = Procs()

try:
    jobs = jobs_ini(work)
    url = procs.nats_server(work, nats_server)
    # TCP: one agent on N addresses.
    addrs = loopback(n)
    tcp_addrs = procs.agent(bin_dir, f"{work}/tcp", n, addr=addrs[0], listen=addrs[1:], prefork=2,
                            jobs=jobs, server={"max_connections": 4096,
                                               "max_connections_per_peer": 4096, "backlog": 4096})
    # NATS: one agent answering to N names.
    procs.agent(bin_dir, f"{work}/nats", 1, quiet=False, pattern=r"nats: serving.*connected=true",
                addr=None, hosts=(), prefork=2, jobs=jobs,
                sections={"nats": {"server[]": url, "name": "e0", "tcp": "off",
                                   "alias[]": [f"e{i}" for i in range(1, n)]}})
    proxies = {}
    for kind, servers in (("tcp", tcp_addrs), ("nats", [f"nats://e{i}" for i in range(n)])):
        proxies[kind] = procs.proxy(
            bin_dir, work, {"fleet": servers}, name=f"proxy-{kind}",
            server={"state_dir": f"{work}/proxy-{kind}", "key_cipher": "benchproxy",
                    "max_connections": 4096},
            client={"concurrency": 256, "thread_timeout": 60, "heartbeat": 0},
            sections={"nats": {"server[]": url}} if kind == "nats" else None)

    def call(kind):
        port = proxies[kind][1]
        cmd = [f"{bin_dir}/deploy-client", "--hosts", "127.0.0.1", "--port", port, "--api-key", "bench",
               "--key-cipher", "benchproxy", "--args", "groups:fleet", "--order", "exec",
               "--options", "service:echo,hi", "--format", "json", "--thread-timeout", "120"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True)
        took = time.perf_counter() - t
        doc = json.loads(r.stdout or b"{}")
        ok = sum(1 for v in doc.values() if v.get("exec", {}).get("returnCode") == "200")
        if ok != n:
            sys.exit(f"{kind}: {ok} of {n} answered 200: {r.stderr.decode()[:1000]}")
        return took

    times = {"tcp": [], "nats": []}
    call("tcp"); call("nats")  # warm-up: connections, pools, subscriptions
    for _ in range(runs):
        for kind in ("tcp", "nats"):
            times[kind].append(call(kind))
    load = os.getloadavg()[0]
    print(f"exec to {n} endpoints through deploy-proxy, {runs} runs each (after a warm-up), {profile} build, load average {load:.1f}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for kind in ("tcp", "nats"):
        v = ", ".join(f"{t:.2f}" for t in times[kind])
        print(f"  {kind:4}: median {med[kind]:.2f} s ({v}); proxy peak RSS {peak_rss_mib(proxies[kind][0].pid):.1f} MiB")
    print(f"  ratio nats / tcp: {med['nats'] / med['tcp']:.2f}x (target <= 1.5x)")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
