#!/usr/bin/env bash
# Benchmark: the start skew of a timed run (`--at`) across N agents (default 20), each
# its own deploy-agent process on 127.0.10.x, reached directly and through deploy-proxy.
# Each agent runs `date +%s%N` (a job run as argv, `allow_run`); the skew is the latest
# minus the earliest start across the agents, and the lateness the earliest start minus
# the instant (all on this machine's one clock, so it measures the agents' wake-ups, not
# clock offsets). The instant is set LEAD ms ahead (default 1500). Median of RUNS runs
# (default 3).
#
# Baseline, in the same run: the same `date +%s%N` on the same agents, direct, without
# `--at` (each starts when its request arrives: the fan-out's own spread); the ratio is
# the timed run's skew over it.
#
# Usage: bench/at-skew.sh [RUNS] [N] [LEAD_MS]
# BENCH_BIN=DIR takes the binaries from DIR (no build). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=${2:-20}
LEAD=${3:-1500}
. bench/bin.sh
bench_bin deploy-agent deploy-proxy deploy-client
exec python3 - "$BIN" "$RUNS" "$N" "$LEAD" <<'EOP'
import base64, json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs

bin_dir, runs, n, lead = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
work = tempfile.mkdtemp(prefix="deploy-at-bench-")
procs = Procs()
try:
    agents = []
    for i in range(1, n + 1):
        agents.append(procs.agent(bin_dir, f"{work}/agent{i}", addr=f"127.0.10.{i}",
                                  server={"allow_run": "on"})[0])
    _, proxy_port = procs.proxy(bin_dir, work, {"fleet": agents}, names={"bench": "bench"},
                                server={"key_cipher": "bench", "allow_run": "on"},
                                client={"concurrency": 1024, "thread_timeout": 60})
    direct = ["--hosts", ",".join(agents)]
    proxied = ["--hosts", "127.0.0.1", "--port", proxy_port, "--api-key", "bench",
               "--args", "groups:fleet"]

    def timed(route, use_at=True):
        at = int(time.time() * 1000) + lead
        flags = [f"--at={at}"] if use_at else []
        t0 = time.time() * 1000
        r = subprocess.run([f"{bin_dir}/deploy-client", *route, "--key-cipher", "bench",
                            "--order=run", *flags, "--format=json", "--", "date", "+%s%N"],
                           capture_output=True, text=True)
        if not use_at:
            at = t0
        if r.returncode != 0:
            sys.exit(f"timed run failed ({r.returncode}):\n{r.stderr[:3000]}\n{r.stdout[:3000]}")
        starts = [int(base64.b64decode(rec["run"]["content"]["content"])) / 1e6
                  for rec in json.loads(r.stdout).values()]
        if len(starts) != n:
            sys.exit(f"{len(starts)} of {n} agents answered")
        return max(starts) - min(starts), min(starts) - at

    print(f"--at start skew across {n} agent processes (lead {lead} ms), {runs} runs, binaries of {bin_dir}")
    print(f"{'run':>4} {'direct skew':>12} {'late':>7} {'proxy skew':>11} {'late':>7} {'no --at skew':>13}")
    rows = []
    for i in range(runs):
        d, dl = timed(direct)
        p, pl = timed(proxied)
        b, _ = timed(direct, use_at=False)
        rows.append((d, dl, p, pl, b))
        print(f"{i + 1:>4} {d:10.2f}ms {dl:5.2f}ms {p:9.2f}ms {pl:5.2f}ms {b:11.2f}ms")
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f" med {med(0):10.2f}ms {med(1):5.2f}ms {med(2):9.2f}ms {med(3):5.2f}ms {med(4):11.2f}ms")
    print(f"ratio --at / no --at (direct skew, medians): {med(0) / med(4):.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")
finally:
    procs.close()
    subprocess.run(["rm", "-rf", work])
EOP
