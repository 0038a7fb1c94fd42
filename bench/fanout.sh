#!/usr/bin/env bash
# Benchmark: one `deploy-client --order=exec` through deploy-proxy to N agents, for
# N = 10, 100, 1000 (median of RUNS runs each, after a warm-up), with the proxy's peak
# RSS. The agents are one deploy-agent listening on N loopback addresses (127.0.x.y),
# which is a real feature (`[server] listen[]`). Baseline: the original needs about
# 2.1 s through its proxy even for one agent (it polls once a second at each hop;
# ../shared/perf-notes.md), so the ratio is against that documented figure.
#
# Usage: bench/fanout.sh [RUNS] [N…]     (default 20 runs; N = 10 100 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-20}
shift || true
SIZES=("${@:-10 100 1000}")
cargo build --release --quiet -p deploy-agent -p deploy-proxy -p deploy-client
exec python3 - "$PWD/target/release" "$RUNS" ${SIZES[@]} <<'EOP'
import json, os, re, signal, statistics, subprocess, sys, tempfile, time

bin_dir, runs, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
BASELINE_MS = 2100.0
work = tempfile.mkdtemp(prefix="deploy-bench-")
procs = []

def start(cmd, log, expect):
    f = open(log, "w+")
    p = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.time() + 30
    while time.time() < deadline:
        f.seek(0)
        lines = re.findall(r"listening on (\S+)", f.read())
        if len(lines) >= expect:
            return p, lines
        if p.poll() is not None:
            f.seek(0)
            sys.exit(f"{cmd[0]} exited: {f.read()}")
        time.sleep(0.05)
    sys.exit(f"{cmd[0]} did not start")

def peak_rss_kib(pid):
    total = 0
    pids = [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    best = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best

try:
    nmax = max(sizes)
    addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(nmax)]
    with open(f"{work}/jobs.ini", "w") as f:
        f.write("[jobs]\nservice:echo = /bin/echo %s\n")
    with open(f"{work}/agent.ini", "w") as f:
        f.write(f"[server]\naddr = {addrs[0]}\nport = 0\nkey_cipher = bench\nstate_dir = {work}/state\n"
                "max_prefork = 2\nmax_connections = 4096\nbacklog = 4096\n")
        for a in addrs[1:]:
            f.write(f"listen[] = {a}:0\n")
        f.write(f"[allow::hosts]\nhost[] = 127.0.0.0/8\n[allow::paths]\npath[] = {work}/target\n"
                f"[jobs]\npath = {work}/jobs.ini\n")
    _, agent_addrs = start([f"{bin_dir}/deploy-agent", "--foreground", "-q", "--path", f"{work}/agent.ini"],
                           f"{work}/agent.log", nmax)
    with open(f"{work}/api.ini", "w") as f:
        f.write("[keys]\nbench[] = " + ",".join(f"n{n}" for n in sizes) + "\n[servers]\n")
        for n in sizes:
            for a in agent_addrs[:n]:
                f.write(f"n{n}[] = {a}\n")
    with open(f"{work}/proxy.ini", "w") as f:
        f.write(f"[server]\naddr = 127.0.0.1\nport = 0\nmax_prefork = 2\n"
                "[client]\nkey_cipher = bench\nconcurrency = 1024\nthread_timeout = 10\n"
                f"[allow::hosts]\nhost[] = 127.0.0.1\n[api]\npath = {work}/api.ini\n")
    proxy, proxy_addrs = start([f"{bin_dir}/deploy-proxy", "--foreground", "-q", "--path", f"{work}/proxy.ini"],
                               f"{work}/proxy.log", 1)
    port = proxy_addrs[0].rsplit(":", 1)[1]
    print(f"deploy-client → deploy-proxy → N agents (exec), {runs} runs each, release build")
    print(f"{'N':>6} {'median':>10} {'p90':>10} {'proxy peak RSS':>15} {'vs original (~2.1 s)':>22}")
    for n in sizes:
        cmd = [f"{bin_dir}/deploy-client", "--hosts", "127.0.0.1", "--port", port, "--api-key", "bench",
               "--args", f"groups:n{n}", "--order", "exec", "--options", "service:echo,hi", "--format", "jsonl"]
        for _ in range(3):  # warm-up: every proxy worker opens its agent connections
            r = subprocess.run(cmd, capture_output=True)
        got = sum(1 for l in r.stdout.decode().splitlines() if json.loads(l)["result"].get("serverStatus") == 1)
        if r.returncode != 0 or got != n:
            sys.exit(f"N={n}: exit {r.returncode}, {got} agents answered\n{r.stderr.decode()[:2000]}")
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True)
            times.append((time.perf_counter() - t) * 1000)
            if r.returncode != 0:
                sys.exit(f"N={n} failed: {r.stderr.decode()[:2000]}")
        times.sort()
        if os.environ.get("BENCH_CPU"):
            # CPU per run, the processes' own and their children's (jobs) apart.
            def cpu(pid):
                own = kids = 0
                for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
                    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                    own += int(f[11]) + int(f[12])
                    kids += int(f[13]) + int(f[14])
                return own, kids
            (a0, k0), (p0, _) = cpu(procs[0].pid), cpu(proxy.pid)
            t = time.perf_counter()
            for _ in range(5):
                subprocess.run(cmd, capture_output=True)
            el = time.perf_counter() - t
            (a1, k1), (p1, _) = cpu(procs[0].pid), cpu(proxy.pid)
            tick = 1000 / os.sysconf("SC_CLK_TCK")
            print(f"   cpu per run: agent {(a1-a0)*tick/5:.0f} ms + its jobs {(k1-k0)*tick/5:.0f} ms, "
                  f"proxy {(p1-p0)*tick/5:.0f} ms, wall {el*1000/5:.0f} ms")
        med = statistics.median(times)
        p90 = times[max(0, int(len(times) * 0.9) - 1)]
        rss = peak_rss_kib(proxy.pid) / 1024
        print(f"{n:>6} {med:8.1f}ms {p90:8.1f}ms {rss:12.1f}MiB {BASELINE_MS / med:20.1f}x")
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    subprocess.run(["rm", "-rf", work])
EOP
