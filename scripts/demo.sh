#!/usr/bin/env bash
# The main job on one machine, on loopback only: an rsync daemon serving a demo tree, a
# deploy-agent and a deploy-proxy started from the etc/ samples, and deploy-client
# pushing the tree through the proxy to the agent (the agent pulls it from the rsync
# daemon), printing each answer in the client's text format (dates, decoded output),
# then a slowed transfer: its progress in status, and a second client attaching to it.
#
# The samples are copied to a temporary directory and only their paths are pointed there
# (allowed target, state directory, the rsync source's port), so nothing is written
# outside that directory and nothing listens beyond 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v rsync >/dev/null || { echo "demo: rsync is needed (apt-get install -y rsync)" >&2; exit 2; }
# Not --quiet: a first build takes minutes, and cargo's progress says how far it is.
echo "== building the release binaries (a first build takes a few minutes)"
cargo build --release -p deploy-agent -p deploy-proxy -p deploy-client
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/deploy-demo.XXXXXX)
cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
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
# uid/gid: as root, rsync's daemon would serve as nobody, who cannot enter $WORK (0700).
cat > "$WORK/rsyncd.conf" <<EOC
use chroot = no
uid = $(id -u)
gid = $(id -g)
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
# A second group, slowed down (100 KiB/s: about 2 s for the demo tree), to watch a
# transfer while it runs.
cat >> "$WORK/deploy_agent.ini" <<EOC

[rsync::group::slow]
dest = rsync://127.0.0.1:$RPORT/DEST
src = $WORK/target/slow
option[] = --archive
option[] = --bwlimit=100
EOC
# The daemons refuse default secrets: the agents' (agent key_cipher, proxy [client]
# key_cipher) and the proxy's callers' ([server] key_cipher), one fresh each.
KEY=demo-$RANDOM$RANDOM
PKEY=demo-proxy-$RANDOM$RANDOM
"$BIN/deploy-agent" --foreground --path "$WORK/deploy_agent.ini" --addr 127.0.0.1 --port 0 \
    --state-dir "$WORK/state" --key-cipher "$KEY" 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/agent.log" 2>/dev/null && break; sleep 0.05; done
APORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$WORK/agent.log" | head -n 1)
[ -n "$APORT" ] || { cat "$WORK/agent.log" >&2; exit 1; }
echo "   agent listening on 127.0.0.1:$APORT"

echo "== deploy-proxy from etc/deploy_proxy.ini (+ etc/deploy_proxy_api.ini)"
cp etc/deploy_proxy.ini etc/deploy_proxy_api.ini "$WORK/"
# The sample's group web names 127.0.0.1 (and [::1]) on the default port: point it at
# the demo agent's port.
sed -i -e "s#^web\[\] = 127.0.0.1\$#web[] = 127.0.0.1:$APORT#" -e '/^web\[\] = \[::1\]/d' \
    -e "s#^db\[\] = 127.0.0.1\$#db[] = 127.0.0.1:$APORT#" "$WORK/deploy_proxy_api.ini"
"$BIN/deploy-proxy" --foreground --path "$WORK/deploy_proxy.ini" --addr 127.0.0.1 --port 0 \
    --key-cipher "$PKEY" --client-key-cipher "$KEY" --http-listen 127.0.0.1:0 --state-dir "$WORK/state" 2> "$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 1 100); do
    n=$(grep -c 'listening on' "$WORK/proxy.log" 2>/dev/null || true)
    [ "${n:-0}" -ge 2 ] && break
    sleep 0.05
done
PPORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$WORK/proxy.log" | head -n 1)
HPORT=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$WORK/proxy.log" | sed -n 2p)
[ -n "$PPORT" ] && [ -n "$HPORT" ] || { cat "$WORK/proxy.log" >&2; exit 1; }
echo "   proxy listening on 127.0.0.1:$PPORT (HTTP API on 127.0.0.1:$HPORT)"

agent() { "$BIN/deploy-client" --hosts 127.0.0.1 --port "$APORT" --key-cipher "$KEY" "$@"; }
proxy() { "$BIN/deploy-client" --hosts 127.0.0.1 --port "$PPORT" --key-cipher "$PKEY" --api-key change-me-api-key --args groups:web "$@"; }

echo "== status, straight to the agent (dry run: what would be transferred)"
agent --order status --options web --format text
echo "== rsync through the proxy, following the transfer to its end (its output on stderr)"
proxy --order rsync --options web --follow --format text
echo "== status through the proxy (nothing left to do; the last transfer is reported)"
proxy --order status --options web --format text
echo "== exec a whitelisted job through the proxy (its output decoded)"
proxy --order exec --options service:echo,hello,world --format text
if command -v curl >/dev/null; then
    echo "== the same through the proxy's HTTP API (JSON, output in base64; decoded below it)"
    curl -s -H 'X-Api-Key: change-me-api-key' -d '{"options":"service:echo,hello","args":"groups:web"}' \
        -H 'Content-Type: application/json' "http://127.0.0.1:$HPORT/api/exec" | tee "$WORK/api.json"
    echo
    python3 - "$WORK/api.json" <<'EOP'
import base64, json, sys
for host, orders in json.load(open(sys.argv[1])).items():
    for order, record in orders.items():
        content = record.get("content") or {}
        output = base64.b64decode(content.get("content", "")).decode(errors="replace")
        print(f"   {host} {order}: code {content.get('code')}, output: {output.rstrip()}")
EOP
fi

echo "== a slowed transfer: started (the client returns at once), then its status while it runs"
proxy --order rsync --options slow --format text
sleep 1
proxy --order status --options slow --format text
echo "== a second client attaches to the running transfer and follows it to its end"
proxy --order rsync --options slow --follow --format text

if diff -r "$WORK/tree" "$WORK/target/web" >/dev/null && diff -r "$WORK/tree" "$WORK/target/slow" >/dev/null; then
    echo "== OK: $WORK/target/web and $WORK/target/slow are identical to the demo tree"
else
    echo "== FAILED: the target differs from the demo tree" >&2
    exit 1
fi
