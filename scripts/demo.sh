#!/usr/bin/env bash
# The main job on one machine, on loopback only: an rsync daemon serving a demo tree, a
# deploy-agent started from the etc/ samples, and deploy-client pushing the tree to the
# agent (the agent pulls it from the rsync daemon), printing each answer as JSON.
#
# The samples are copied to a temporary directory and only their paths are pointed there
# (allowed target, state directory, the rsync source's port), so nothing is written
# outside that directory and nothing listens beyond 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v rsync >/dev/null || { echo "demo: rsync is needed (apt-get install -y rsync)" >&2; exit 2; }
cargo build --release --quiet -p deploy-agent -p deploy-client
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/deploy-demo.XXXXXX)
cleanup() {
    [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    [ -f "$WORK/rsyncd.pid" ] && kill "$(cat "$WORK/rsyncd.pid")" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== demo tree and rsync daemon (module DEST) in $WORK"
mkdir -p "$WORK/tree/docs" "$WORK/target" "$WORK/state"
for i in $(seq 1 20); do head -c $((i * 1024)) /dev/urandom > "$WORK/tree/file$i.bin"; done
echo "hello from deploy" > "$WORK/tree/docs/README.txt"
RPORT=$(free_port)
cat > "$WORK/rsyncd.conf" <<EOC
use chroot = no
pid file = $WORK/rsyncd.pid
[DEST]
path = $WORK/tree
read only = yes
EOC
rsync --daemon --config="$WORK/rsyncd.conf" --address=127.0.0.1 --port="$RPORT"

echo "== deploy-agent from etc/deploy_agent.ini (+ etc/deploy_agent_exec.ini)"
cp etc/deploy_agent.ini etc/deploy_agent_exec.ini "$WORK/"
sed -i -e "s#/var/lib/deploy/target#$WORK/target#g" \
       -e "s#^dest = 127.0.0.1::DEST#dest = rsync://127.0.0.1:$RPORT/DEST#" "$WORK/deploy_agent.ini"
KEY=demo-$RANDOM$RANDOM
"$BIN/deploy-agent" --foreground --path "$WORK/deploy_agent.ini" --addr 127.0.0.1 --port 0 \
    --state-dir "$WORK/state" --key-cipher "$KEY" 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/agent.log" && break; sleep 0.05; done
APORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$WORK/agent.log" | head -n 1)
[ -n "$APORT" ] || { cat "$WORK/agent.log" >&2; exit 1; }
echo "   agent listening on 127.0.0.1:$APORT"

client() { "$BIN/deploy-client" --hosts 127.0.0.1 --port "$APORT" --key-cipher "$KEY" "$@"; }

echo "== status (dry run: what would be transferred)"
client --order status --options web
echo "== rsync, following the transfer to its end"
client --order rsync --options web --follow
echo "== status again (nothing left to do; the last transfer is reported)"
client --order status --options web
echo "== exec a whitelisted job"
client --order exec --options service:echo,hello,world --format text

if diff -r "$WORK/tree" "$WORK/target/web" >/dev/null; then
    echo "== OK: $WORK/target/web is identical to the demo tree"
else
    echo "== FAILED: the target differs from the demo tree" >&2
    exit 1
fi
