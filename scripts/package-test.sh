#!/usr/bin/env bash
# CI step (called from .ci/run, as root): builds the Debian packages, installs them
# with dpkg -i, checks what they installed (units, man pages, completions, users,
# conffiles), runs `--check` on the installed configurations, starts the installed
# agent and proxy from those configurations with lab secrets written here, sends an
# order through the proxy to the agent with the installed client (a job, and an rsync
# pull from a lab rsync daemon), then purges the packages and checks that their state
# is gone.
#
# Without systemd as PID 1 (a container, CI here) the daemons are started directly,
# as their units would: the agent as root, the proxy as deploy-proxy. Everything
# listens on 127.0.0.1 only (the shipped ports 3440, 3441; the rsync daemon on a free
# port). Refuses to run where deploy packages are installed already.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "package-test: must run as root (dpkg -i)" >&2; exit 2; }
if dpkg-query -W -f '${Status}' deploy-agent deploy-proxy deploy-client 2>/dev/null | grep -q installed; then
    echo "package-test: deploy packages are installed on this machine; not touching them" >&2
    exit 2
fi

./scripts/packages.sh
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
debs=()
for p in deploy-agent deploy-proxy deploy-client; do
    debs+=("$(ls -t "$target_dir"/debian/${p}_"$version"*_*.deb | head -n 1)")
done

WORK=$(mktemp -d /tmp/deploy-package-test.XXXXXX)
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }
cleanup() {
    [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
    [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
    [ -f "$WORK/rsyncd.pid" ] && kill "$(cat "$WORK/rsyncd.pid")" 2>/dev/null
    # Whatever happened, leave no package behind.
    dpkg --purge deploy-agent deploy-proxy deploy-client >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== dpkg -i ${debs[*]##*/}"
dpkg -i "${debs[@]}"

echo "== what the packages installed"
for f in /usr/bin/deploy-agent /usr/bin/deploy-proxy /usr/bin/deploy-client \
    /lib/systemd/system/deploy-agent.service /lib/systemd/system/deploy-proxy.service \
    /usr/share/man/man8/deploy-agent.8.gz /usr/share/man/man8/deploy-proxy.8.gz \
    /usr/share/man/man1/deploy-client.1.gz \
    /usr/share/bash-completion/completions/deploy-client \
    /usr/share/zsh/vendor-completions/_deploy-agent \
    /usr/share/fish/vendor_completions.d/deploy-proxy.fish \
    /etc/logrotate.d/deploy-agent /etc/logrotate.d/deploy-proxy \
    /etc/deploy/deploy_agent.ini /etc/deploy/deploy_agent_exec.ini \
    /etc/deploy/deploy_proxy.ini /etc/deploy/deploy_proxy_api.ini; do
    [ -e "$f" ] || fail "$f is missing"
done
for u in deploy-agent deploy-proxy; do getent passwd "$u" >/dev/null || fail "no user $u"; done
for conf in deploy-agent:/etc/deploy/deploy_agent.ini deploy-proxy:/etc/deploy/deploy_proxy_api.ini; do
    dpkg-query -W -f '${Conffiles}\n' "${conf%%:*}" | grep -q " ${conf#*:} " \
        || fail "${conf#*:} is not a conffile of ${conf%%:*}"
done
[ "$(stat -c %G:%a /etc/deploy/deploy_proxy.ini)" = deploy-proxy:640 ] || fail "deploy_proxy.ini: $(stat -c %U:%G:%a /etc/deploy/deploy_proxy.ini)"
zcat /usr/share/man/man8/deploy-agent.8.gz | grep -q '^\.TH deploy-agent 8' || fail "man page section"
deploy-agent --version | grep -q "^deploy-agent $version (commit " || fail "deploy-agent --version: $(deploy-agent --version)"
if command -v systemd-analyze >/dev/null 2>&1; then
    # The units' Documentation=man:… is checked with man(1) where it is installed.
    man_check=--man=no
    command -v man >/dev/null 2>&1 && man_check=--man=yes
    systemd-analyze verify "$man_check" /lib/systemd/system/deploy-agent.service \
        /lib/systemd/system/deploy-proxy.service
    for unit in deploy-agent:5.0 deploy-proxy:3.0; do
        name=${unit%:*}
        limit=${unit#*:}
        exposure=$(systemd-analyze security --offline=true "/lib/systemd/system/$name.service" 2>/dev/null \
            | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
        echo "   systemd-analyze security $name: $exposure (at most $limit)"
        awk -v e="$exposure" -v l="$limit" 'BEGIN { exit !(e != "" && e <= l) }' \
            || fail "$name exposure $exposure > $limit"
    done
else
    echo "   note: no systemd-analyze here; units not verified" >&2
fi
if command -v logrotate >/dev/null 2>&1; then
    logrotate --debug /etc/logrotate.d/deploy-agent /etc/logrotate.d/deploy-proxy >/dev/null 2>&1 \
        || fail "logrotate rejects the shipped files"
fi

echo "== --check on the installed configurations"
# As shipped: placeholder secrets, refused.
if deploy-agent --check >/dev/null 2>"$WORK/check.err"; then fail "the shipped agent config passed --check"; fi
grep -q "default secret" "$WORK/check.err" || fail "$(cat "$WORK/check.err")"
# Lab secrets, a lab rsync source and a lab API key, written into the installed files.
AKEY=lab-agent-$RANDOM$RANDOM
PKEY=lab-proxy-$RANDOM$RANDOM
APIKEY=lab-api-$RANDOM$RANDOM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port)
mkdir -p "$WORK/tree/docs"
echo "pushed by the installed packages" > "$WORK/tree/docs/README.txt"
head -c 100000 /dev/urandom > "$WORK/tree/blob.bin"
# uid/gid: as root, rsync's daemon would serve as nobody, who cannot enter $WORK (0700);
# Debian's rsync 3.2.7 opens the files it sends by their full path, so this matters.
printf 'use chroot = no\npid file = %s/rsyncd.pid\nuid = %s\ngid = %s\n[DEST]\npath = %s/tree\nread only = yes\n' \
    "$WORK" "$(id -u)" "$(id -g)" "$WORK" > "$WORK/rsyncd.conf"
rsync --daemon --config="$WORK/rsyncd.conf" --address=127.0.0.1 --port="$RPORT"
sed -i -e "s/^key_cipher = change-me\$/key_cipher = $AKEY/" \
    -e "s#^dest = 127.0.0.1::DEST\$#dest = rsync://127.0.0.1:$RPORT/DEST#" /etc/deploy/deploy_agent.ini
sed -i -e "0,/^key_cipher = change-me\$/s//key_cipher = $PKEY/" \
    -e "s/^key_cipher = change-me\$/key_cipher = $AKEY/" /etc/deploy/deploy_proxy.ini
sed -i -e "s/change-me-api-key/$APIKEY/" /etc/deploy/deploy_proxy_api.ini
# The sample's allowed path, as an administrator would create it.
mkdir -p /var/lib/deploy/target
deploy-agent -t
deploy-proxy -t

echo "== the installed daemons, from the installed configurations"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start deploy-agent deploy-proxy
    trap 'systemctl stop deploy-agent deploy-proxy || true; cleanup' EXIT
    systemctl is-active deploy-agent deploy-proxy
else
    # As the units run them: RuntimeDirectory= and StateDirectory= made by hand.
    install -d -m 0755 /run/deploy-agent
    install -d -o deploy-proxy -g deploy-proxy -m 0755 /run/deploy-proxy
    install -d -o deploy-proxy -g deploy-proxy -m 0700 /var/lib/deploy-proxy
    deploy-agent --foreground --addr 127.0.0.1 --pid-file /run/deploy-agent/deploy-agent.pid \
        2> "$WORK/agent.log" &
    AGENT_PID=$!
    setpriv --reuid deploy-proxy --regid deploy-proxy --init-groups \
        deploy-proxy --foreground --addr 127.0.0.1 --pid-file /run/deploy-proxy/deploy-proxy.pid \
        2> "$WORK/proxy.log" &
    PROXY_PID=$!
    for log in agent proxy; do
        for _ in $(seq 1 200); do grep -q ' started' "$WORK/$log.log" 2>/dev/null && break; sleep 0.05; done
        grep -q ' started' "$WORK/$log.log" || { cat "$WORK/$log.log" >&2; fail "deploy-$log did not start"; }
    done
fi

echo "== orders through the installed proxy to the installed agent, with the installed client"
client() {
    deploy-client --hosts 127.0.0.1 --key-cipher "$PKEY" --api-key "$APIKEY" --args groups:db "$@"
}
client --order exec --options service:echo,installed,packages --format json > "$WORK/exec.json"
# The job's output travels base64-encoded, as the original's did.
grep -q "$(printf 'installed packages\n' | base64)" "$WORK/exec.json" \
    || { cat "$WORK/exec.json" >&2; fail "exec through the proxy"; }
client --order rsync --options web --follow > "$WORK/rsync.out"
cmp "$WORK/tree/docs/README.txt" /var/lib/deploy/target/web/docs/README.txt \
    || { cat "$WORK/rsync.out" >&2; fail "rsync through the proxy"; }
cmp "$WORK/tree/blob.bin" /var/lib/deploy/target/web/blob.bin || fail "rsync: blob.bin differs"
echo "   exec and rsync went through"

echo "== purge"
if [ -d /run/systemd/system ]; then
    systemctl stop deploy-agent deploy-proxy
else
    kill "$AGENT_PID" "$PROXY_PID"
    wait "$AGENT_PID" "$PROXY_PID" || true
    AGENT_PID= PROXY_PID=
fi
rm -rf /var/lib/deploy/target
rmdir /var/lib/deploy 2>/dev/null || true
dpkg --purge deploy-client deploy-proxy deploy-agent
for f in /usr/bin/deploy-agent /etc/deploy /var/lib/deploy-agent /var/lib/deploy-proxy \
    /run/deploy-agent /run/deploy-proxy /lib/systemd/system/deploy-agent.service; do
    [ ! -e "$f" ] || fail "$f is still there after purge"
done
echo "== package-test: OK"
