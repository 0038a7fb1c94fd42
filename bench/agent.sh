#!/usr/bin/env bash
# Benchmark: wall time of one `deploy-client` process running one order against a local
# agent, over many runs, for `exec` and `status`, over v2 and v1. Prints the median (and
# p90) of each, and the ratio against the original Perl deploy's documented ~1.1 s per
# order (../shared/perf-notes.md: its fan-out engine polls once a second, so that figure is
# a floor, not a measurement here — the original cannot run on this machine).
#
# Usage: bench/agent.sh [RUNS]        (default 50; release build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
BASELINE_MS=1100

cargo build --release --quiet -p deploy-agent -p deploy-client
BIN=$PWD/target/release
WORK=$(mktemp -d)
cleanup() {
    [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    [ -f "$WORK/rsyncd.pid" ] && kill "$(cat "$WORK/rsyncd.pid")" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# A source tree of 200 small files behind an rsync daemon, for `status` (a dry run).
mkdir -p "$WORK/src" "$WORK/target" "$WORK/state"
for i in $(seq 1 200); do head -c $((i * 100)) /dev/urandom > "$WORK/src/f$i"; done
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/rsyncd.conf" <<EOC
use chroot = no
pid file = $WORK/rsyncd.pid
[DEST]
path = $WORK/src
read only = yes
EOC
rsync --daemon --config="$WORK/rsyncd.conf" --address=127.0.0.1 --port="$RPORT"

cat > "$WORK/agent.ini" <<EOC
[server]
addr = 127.0.0.1
port = 0
key_cipher = bench-secret
legacy_protocol = on
state_dir = $WORK/state
max_prefork = 2
[allow::hosts]
host[] = 127.0.0.1
[allow::paths]
path[] = $WORK/target
[rsync::group::web]
dest = rsync://127.0.0.1:$RPORT/DEST
src = $WORK/target/web
[jobs]
path = $WORK/jobs.ini
EOC
printf '[jobs]\nservice:echo = /bin/echo %%s\n' > "$WORK/jobs.ini"
"$BIN/deploy-agent" --foreground -q --path "$WORK/agent.ini" 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/agent.log" 2>/dev/null && break; sleep 0.05; done
APORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$WORK/agent.log" | head -n 1)

python3 - "$BIN/deploy-client" "$APORT" "$RUNS" "$BASELINE_MS" <<'EOP'
import statistics, subprocess, sys, time
client, port, runs, baseline = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
print(f"deploy-client → deploy-agent on 127.0.0.1, {runs} runs each, release build")
print(f"{'order':8} {'protocol':8} {'median':>10} {'p90':>10} {'vs original (~{:.0f} ms)'.format(baseline):>26}")
for order, options in (("exec", "service:echo,hello"), ("status", "web")):
    for proto in ("v2", "v1"):
        cmd = [client, "--hosts", "127.0.0.1", "--port", port, "--key-cipher", "bench-secret",
               "--order", order, "--options", options, "--protocol", proto]
        subprocess.run(cmd, check=True, capture_output=True)  # warm-up
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True)
            times.append((time.perf_counter() - t) * 1000)
            if r.returncode != 0:
                sys.exit(f"{order}/{proto} failed: {r.stdout.decode()} {r.stderr.decode()}")
        times.sort()
        med = statistics.median(times)
        p90 = times[int(len(times) * 0.9) - 1]
        print(f"{order:8} {proto:8} {med:8.2f}ms {p90:8.2f}ms {baseline / med:24.0f}x")
EOP
