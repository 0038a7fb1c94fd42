#!/usr/bin/env bash
# Benchmark (issue 8 §3): legitimate `exec` latency while 1,000 stalled connections sit
# on the agent — half from an allowed peer (127.0.0.2), half from a refused one
# (127.0.0.3) — against a baseline without them. The stalled connections connect and
# send nothing; whichever the agent closes is reopened REOPEN seconds later (default 1;
# 0 = at once, a connection flood), so the pressure lasts the whole measurement. The orders are `deploy-client --order=exec` (v2, one process
# per order, so process start-up is in both figures) from 127.0.0.1.
# Prints median and p99 of both runs and their ratio; the target is p99 < 50 ms.
#
# Usage: bench/stalled.sh [ORDERS] [STALLED] [REOPEN]
#        (default 50 orders, 1000 stalled, reopened 1 s after a close; release build)
# BENCH_BIN=DIR takes the binaries from DIR (no build).
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS=${1:-50}
STALLED=${2:-1000}
REOPEN=${3:-1}

. bench/bin.sh
bench_bin deploy-agent deploy-client
ulimit -n 8192 2>/dev/null || true
exec python3 - "$BIN" "$ORDERS" "$STALLED" "$REOPEN" <<'EOP'
import atexit, errno, heapq, os, selectors, socket, statistics, subprocess, sys, tempfile, threading, time
sys.path.insert(0, "bench")
from procs import Procs, clean, jobs_ini, timed

bin_dir, orders, stalled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reopen = float(sys.argv[4])
client = f"{bin_dir}/deploy-client"
work = tempfile.mkdtemp(prefix="deploy-stalled-bench-")
procs = Procs()
atexit.register(lambda: (procs.close(), clean(work)))  # also on sys.exit
os.makedirs(f"{work}/target")
addr = procs.agent(bin_dir, work, key="bench-secret", prefork=2, hosts=["127.0.0.1", "127.0.0.2"],
                   paths=[f"{work}/target"], jobs=jobs_ini(work), server={"legacy_protocol": "on"})[0]
port = int(addr.rsplit(":", 1)[1])
cmd = [client, "--hosts", "127.0.0.1", "--port", str(port), "--key-cipher", "bench-secret",
       "--order", "exec", "--options", "service:echo,hello"]

def measure(label):
    subprocess.run(cmd, check=True, capture_output=True)  # warm-up
    times = timed(cmd, orders, f"{label}: exec")
    p99 = times[max(0, int(len(times) * 0.99 + 0.5) - 1)]
    return statistics.median(times), p99

def open_stalled(source):
    s = socket.socket()
    s.setblocking(False)
    s.bind((source, 0))
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    return s

stop = threading.Event()
opened = {"count": 0, "reopened": 0}

def hold():
    sel = selectors.DefaultSelector()
    for i in range(stalled):
        src = "127.0.0.2" if i % 2 == 0 else "127.0.0.3"
        sel.register(open_stalled(src), selectors.EVENT_READ, src)
        opened["count"] += 1
    due = []  # (when, seq, source) of connections to reopen
    seq = 0
    while not stop.is_set():
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, src = heapq.heappop(due)
            try:
                sel.register(open_stalled(src), selectors.EVENT_READ, src)
                opened["reopened"] += 1
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EMFILE):
                    raise
        wait = 0.2 if not due else max(0.0, min(0.2, due[0][0] - now))
        for key, _ in sel.select(timeout=wait):
            s, src = key.fileobj, key.data
            try:
                data = s.recv(4096)
            except (ConnectionError, OSError):
                data = b""
            if data:
                continue
            sel.unregister(s)
            s.close()
            seq += 1
            heapq.heappush(due, (time.monotonic() + reopen, seq, src))
    for key in list(sel.get_map().values()):
        key.fileobj.close()

base_med, base_p99 = measure("baseline")
holder = threading.Thread(target=hold, daemon=True)
holder.start()
time.sleep(2)
load_med, load_p99 = measure("stalled")
stop.set()
holder.join()

print(f"exec latency, {orders} orders each (deploy-client, v2, binaries of {bin_dir})")
print(f"{'':28} {'median':>9} {'p99':>9}")
print(f"{'baseline':28} {base_med:8.1f}ms {base_p99:8.1f}ms")
print(f"{f'{stalled} stalled connections':28} {load_med:8.1f}ms {load_p99:8.1f}ms")
print(f"{'ratio':28} {load_med / base_med:8.2f}x  {load_p99 / base_p99:8.2f}x")
print(f"stalled connections reopened {reopen:g} s after the agent closed them: {opened['reopened']}")
print(f"target p99 < 50 ms under load: {'met' if load_p99 < 50 else 'NOT met'}")
EOP
