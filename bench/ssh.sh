#!/usr/bin/env bash
# Benchmark: `true` on N SSH hosts, N = 10, 50, 100, with deploy-client (ssh://, russh)
# side by side with parallel-ssh (pssh) and clush (clustershell), and `xargs -P` + ssh
# for reference; median of RUNS runs each (rounds interleave the tools), after a
# warm-up. The hosts are sshd instances on loopback (bench/sshfleet.py), 16 addresses (127.0.x.y) each
# (sshd's limit of ListenAddress), all on one port; every tool uses the same user key,
# the same known_hosts (strict checking) and as many connections at once as hosts.
# The sessions get an empty HOME (sshd's SetEnv): Debian's bash sources ~/.bashrc for
# commands run by sshd, and a heavy root .bashrc (pyenv, …) would otherwise dominate
# every tool's time with the same remote cost.
#
# Usage: bench/ssh.sh [RUNS] [N…]     (default 5 runs; N = 10 50 100)
# Needs root (sshd), /usr/sbin/sshd, parallel-ssh and clush
# (apt-get install -y openssh-server pssh clustershell).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
shift || true
SIZES=("${@:-10 50 100}")
if [ -z "${BIN:-}" ]; then   # BIN=path/to/deploy-client measures another build
  cargo build --release --quiet -p deploy-client
  BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/deploy-client"
fi
exec python3 - "$BIN" "$RUNS" ${SIZES[@]} <<'EOP'
import os, shutil, statistics, subprocess, sys, time

client, runs, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
for tool in ("ssh", "parallel-ssh", "clush"):
    if not shutil.which(tool):
        sys.exit(f"{tool} is missing: apt-get install -y openssh-server openssh-client pssh clustershell")
sys.path.insert(0, "bench")
from sshfleet import Fleet

fleet = Fleet(max(sizes))
try:
    work, home, addrs, port = fleet.work, fleet.home, fleet.addrs, fleet.port
    # The OpenSSH-based tools read this configuration (and nothing of the real ~/.ssh).
    ssh_cfg = f"{work}/ssh_config"
    with open(ssh_cfg, "w") as f:
        f.write(f"Host *\n  Port {port}\n  User root\n  IdentityFile {home}/.ssh/id_ed25519\n"
                f"  IdentitiesOnly yes\n  UserKnownHostsFile {home}/.ssh/known_hosts\n"
                "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
                "  BatchMode yes\n  ControlMaster no\n  ControlPath none\n")
    env = fleet.env

    def commands(n):
        hosts = addrs[:n]
        hostfile = f"{work}/hosts{n}"
        with open(hostfile, "w") as f:
            f.write("\n".join(hosts) + "\n")
        return {
            "deploy-client": [client, "--hosts", ",".join(f"ssh://{a}:{port}" for a in hosts),
                              "--order=run", "-q", "--", "true"],
            "pssh": ["parallel-ssh", "-h", hostfile, "-p", str(n), "-x", f"-F {ssh_cfg}", "true"],
            "clush": ["clush", "-w", ",".join(hosts), "-f", str(n), "-o", f"-F {ssh_cfg}", "true"],
            "xargs+ssh": ["sh", "-c", f"xargs -P {n} -I@ ssh -F {ssh_cfg} @ true < {hostfile}"],
        }

    def timed(cmd):
        start = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - start
        if r.returncode != 0:
            sys.exit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode(errors='replace')[:2000]}")
        return took

    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    tools = ["deploy-client", "pssh", "clush", "xargs+ssh"]
    results = {}
    for n in sizes:
        cmds = commands(n)
        for t in tools:
            timed(cmds[t])  # warm-up (page cache, sshd)
        times = {t: [] for t in tools}
        for _ in range(runs):
            for t in tools:
                times[t].append(timed(cmds[t]))
        results[n] = {t: statistics.median(v) for t, v in times.items()}

    print(f"`true` on N hosts over SSH, median of {runs} runs (seconds); "
          f"ratio = fastest of pssh/clush ÷ deploy-client")
    print(f"{'N':>5} " + " ".join(f"{t:>14}" for t in tools) + f" {'ratio':>7}")
    ok = True
    for n in sizes:
        r = results[n]
        best = min(r["pssh"], r["clush"])
        ratio = best / r["deploy-client"]
        ok &= ratio > 1
        print(f"{n:>5} " + " ".join(f"{r[t]:>14.3f}" for t in tools) + f" {ratio:>6.2f}x")
    print(f"load average (1, 5, 15 min) before the runs: {load_before} "
          "(during them, the tools' own processes raise it)")
    print("deploy-client is faster than pssh and clush at every N" if ok
          else "deploy-client is NOT faster at every N")
finally:
    fleet.close()
EOP
