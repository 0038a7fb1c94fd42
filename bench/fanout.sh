#!/usr/bin/env bash
# Benchmark: one `deploy-client --order=exec` through deploy-proxy to N agents, for
# N = 10, 100, 1000 (median of RUNS runs each, after a warm-up), with the proxy's peak
# RSS. The agents are one deploy-agent listening on N loopback addresses (127.0.x.y),
# which is a real feature (`[server] listen[]`). Baseline: the original needs about
# 2.1 s through its proxy even for one agent (it polls once a second at each hop;
# ../shared/perf-notes.md), so the ratio is against that documented figure.
#
# Usage: bench/fanout.sh [RUNS] [N…]     (default 20 runs; N = 10 100 1000)
# BENCH_BIN=DIR takes the binaries from DIR (no build).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
shift || true
SIZES=("${@:-10 100 1000}")
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
exec python3 - "$BIN" "$RUNS" ${SIZES[@]} <<'EOP'
import json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, jobs_ini, loopback, peak_rss_mib, timed

bin_dir, runs, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
BASELINE_MS = 2100.0
work = tempfile.mkdtemp(prefix="deploy-bench-")
procs = Procs()

try:
    nmax = max(sizes)
    addrs = loopback(nmax)
    agent_addrs = procs.agent(bin_dir, work, nmax, addr=addrs[0], listen=addrs[1:], prefork=2,
                              paths=[f"{work}/target"], jobs=jobs_ini(work),
                              server={"max_connections": 4096, "backlog": 4096})
    proxy, port = procs.proxy(bin_dir, work, {f"n{n}": agent_addrs[:n] for n in sizes},
                              server={"key_cipher": "bench"},
                              client={"concurrency": 1024, "thread_timeout": 10})
    print(f"deploy-client → deploy-proxy → N agents (exec), {runs} runs each, binaries of {bin_dir}")
    print(f"{'N':>6} {'median':>10} {'p90':>10} {'proxy peak RSS':>15} {'vs original (~2.1 s)':>22}")
    for n in sizes:
        cmd = [f"{bin_dir}/deploy-client", "--hosts", "127.0.0.1", "--port", port, "--api-key", "bench",
               "--key-cipher", "bench", "--args", f"groups:n{n}", "--order", "exec",
               "--options", "service:echo,hi", "--format", "jsonl"]
        for _ in range(3):  # warm-up: every proxy worker opens its agent connections
            r = subprocess.run(cmd, capture_output=True)
        got = sum(1 for l in r.stdout.decode().splitlines() if json.loads(l)["result"].get("serverStatus") == 1)
        if r.returncode != 0 or got != n:
            sys.exit(f"N={n}: exit {r.returncode}, {got} agents answered\n{r.stderr.decode()[:2000]}")
        times = timed(cmd, runs, f"N={n}")
        if os.environ.get("BENCH_CPU"):
            # CPU per run, the processes' own and their children's (jobs) apart.
            def cpu(pid):
                own = kids = 0
                for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
                    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                    own += int(f[11]) + int(f[12])
                    kids += int(f[13]) + int(f[14])
                return own, kids
            (a0, k0), (p0, _) = cpu(procs.procs[0].pid), cpu(proxy.pid)
            t = time.perf_counter()
            for _ in range(5):
                subprocess.run(cmd, capture_output=True)
            el = time.perf_counter() - t
            (a1, k1), (p1, _) = cpu(procs.procs[0].pid), cpu(proxy.pid)
            tick = 1000 / os.sysconf("SC_CLK_TCK")
            print(f"   cpu per run: agent {(a1-a0)*tick/5:.0f} ms + its jobs {(k1-k0)*tick/5:.0f} ms, "
                  f"proxy {(p1-p0)*tick/5:.0f} ms, wall {el*1000/5:.0f} ms")
        med = statistics.median(times)
        p90 = times[max(0, int(len(times) * 0.9) - 1)]
        rss = peak_rss_mib(proxy.pid)
        print(f"{n:>6} {med:8.1f}ms {p90:8.1f}ms {rss:12.1f}MiB {BASELINE_MS / med:20.1f}x")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
