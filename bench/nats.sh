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
#         order and reply stream (its names enrolled with --print-nats-key when the
#         build has per-agent keys, the proxy pinning them).
# Two proxies, one per path (so that each one's RSS is its own), both with
# concurrency = 256; the groups are plain (no nats_publish): N sealed publishes, the
# same work shape as N TCP orders.
#
# Usage: bench/nats.sh [RUNS] [N]     (default 5 runs, N = 1000)
#        PROFILE=debug bench/nats.sh  (the debug build, to skip a release build)
#        BIN_DIR=/tmp/old bench/nats.sh (binaries already built, e.g. a saved baseline,
#                                        to compare two builds in one session)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
N=${2:-1000}
PROFILE=${PROFILE:-release}
if [ -n "${BIN_DIR:-}" ]; then
    DIR=$(realpath "$BIN_DIR")
    PROFILE="$PROFILE ($DIR)"
elif [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p deploy-agent -p deploy-proxy -p deploy-client
    DIR=target/release
else
    cargo build --quiet -p deploy-agent -p deploy-proxy -p deploy-client
    DIR=target/debug
fi
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
exec python3 - "$DIR" "$RUNS" "$N" "$PROFILE" "$NATS_SERVER" <<'EOP'
import json, os, re, signal, statistics, subprocess, sys, tempfile, time

bin_dir, runs, n, profile, nats_server = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
work = tempfile.mkdtemp(prefix="deploy-bench-nats-")
procs = []

def start(cmd, log, pattern, expect):
    f = open(log, "w+")
    p = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.time() + 120
    while time.time() < deadline:
        f.seek(0)
        found = re.findall(pattern, f.read())
        if len(found) >= expect:
            return p, found
        if p.poll() is not None:
            f.seek(0)
            sys.exit(f"{cmd[0]} exited: {f.read()[-2000:]}")
        time.sleep(0.05)
    f.seek(0)
    sys.exit(f"{cmd[0]} did not start: {f.read()[-2000:]}")

def peak_rss_mib(pid):
    best = 0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best / 1024

try:
    open(f"{work}/jobs.ini", "w").write("[jobs]\nservice:echo = /bin/echo %s\n")
    _, urls = start([nats_server, "-a", "127.0.0.1", "-p", "-1"], f"{work}/nats.log",
                    r"Listening for client connections on (\S+)", 1)
    url = "nats://" + urls[0]
    # TCP: one agent on N addresses.
    addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
    with open(f"{work}/tcp.ini", "w") as f:
        f.write(f"[server]\naddr = {addrs[0]}\nport = 0\nkey_cipher = bench\nstate_dir = {work}/tcp-state\n"
                "max_prefork = 2\nmax_connections = 4096\nmax_connections_per_peer = 4096\nbacklog = 4096\n")
        for a in addrs[1:]:
            f.write(f"listen[] = {a}:0\n")
        f.write(f"[allow::hosts]\nhost[] = 127.0.0.0/8\n[jobs]\npath = {work}/jobs.ini\n")
    _, tcp_addrs = start([f"{bin_dir}/deploy-agent", "--foreground", "-q", "--path", f"{work}/tcp.ini"],
                         f"{work}/tcp.log", r"listening on (\S+)", n)
    # NATS: one agent answering to N names.
    with open(f"{work}/nats.ini", "w") as f:
        f.write(f"[server]\nkey_cipher = bench\nstate_dir = {work}/nats-state\nmax_prefork = 2\n"
                f"[jobs]\npath = {work}/jobs.ini\n[nats]\nserver[] = {url}\nname = e0\ntcp = off\n")
        for i in range(1, n):
            f.write(f"alias[] = e{i}\n")
    # Enrol its names (builds with per-agent NATS keys): the pins the proxy needs.
    pins = None
    if b"print-nats-key" in subprocess.run([f"{bin_dir}/deploy-agent", "--help"], capture_output=True).stdout:
        pins = f"{work}/agent-keys"
        with open(pins, "wb") as f:
            f.write(subprocess.run([f"{bin_dir}/deploy-agent", "--print-nats-key", "--path", f"{work}/nats.ini"],
                                   capture_output=True, check=True).stdout)
    start([f"{bin_dir}/deploy-agent", "--foreground", "--path", f"{work}/nats.ini"],
          f"{work}/nats-agent.log", r"nats: serving.*connected=true", 1)
    proxies = {}
    for kind, servers in (("tcp", tcp_addrs), ("nats", [f"nats://e{i}" for i in range(n)])):
        with open(f"{work}/api-{kind}.ini", "w") as f:
            f.write("[keys]\nbench[] = fleet\n[servers]\n")
            for s in servers:
                f.write(f"fleet[] = {s}\n")
        with open(f"{work}/proxy-{kind}.ini", "w") as f:
            f.write(f"[server]\naddr = 127.0.0.1\nport = 0\nmax_prefork = 2\nstate_dir = {work}/proxy-{kind}\n"
                    "key_cipher = benchproxy\nmax_connections = 4096\n"
                    "[client]\nkey_cipher = bench\nconcurrency = 256\nthread_timeout = 60\nheartbeat = 0\n"
                    f"[allow::hosts]\nhost[] = 127.0.0.1\n[api]\npath = {work}/api-{kind}.ini\n")
            if kind == "nats":
                f.write(f"[nats]\nserver[] = {url}\n")
                if pins:
                    f.write(f"agent_keys = {pins}\n")
        p, addr = start([f"{bin_dir}/deploy-proxy", "--foreground", "-q", "--path", f"{work}/proxy-{kind}.ini"],
                        f"{work}/proxy-{kind}.log", r"listening on (\S+)", 1)
        proxies[kind] = (p, addr[0].rsplit(":", 1)[1])

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
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    subprocess.run(["rm", "-rf", work])
EOP
