#!/usr/bin/env bash
# Benchmark: `true` on N SSH hosts, N = 10, 50, 100, with deploy-client (ssh://, russh)
# side by side with parallel-ssh (pssh) and clush (clustershell), and `xargs -P` + ssh
# for reference; median of RUNS runs each (rounds interleave the tools), after a
# warm-up. The hosts are sshd instances on loopback, 16 addresses (127.0.x.y) each
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
cargo build --release --quiet -p deploy-client
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/deploy-client"
exec python3 - "$BIN" "$RUNS" ${SIZES[@]} <<'EOP'
import os, shutil, socket, statistics, subprocess, sys, tempfile, time

client, runs, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "parallel-ssh", "clush"):
    if not shutil.which(tool) and not os.path.exists(tool):
        sys.exit(f"{tool} is missing: apt-get install -y openssh-server openssh-client pssh clustershell")
work = tempfile.mkdtemp(prefix="deploy-bench-ssh-")
home = f"{work}/home"
os.makedirs(f"{home}/.ssh")
os.makedirs(f"{work}/remote-home")
os.makedirs("/run/sshd", exist_ok=True)
procs = []
PER_SSHD = 16

def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)

try:
    nmax = max(sizes)
    addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(nmax)]
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    keygen(f"{home}/.ssh/id_ed25519")
    keygen(f"{work}/hostkey")
    shutil.copy(f"{home}/.ssh/id_ed25519.pub", f"{work}/authorized_keys")
    hostkey = " ".join(open(f"{work}/hostkey.pub").read().split()[:2])
    with open(f"{home}/.ssh/known_hosts", "w") as f:
        for a in addrs:
            f.write(f"[{a}]:{port} {hostkey}\n")
    # One sshd per 16 addresses, all on `port`.
    for k in range(0, nmax, PER_SSHD):
        cfg = f"{work}/sshd_config{k}"
        with open(cfg, "w") as f:
            f.write(f"Port {port}\n")
            for a in addrs[k:k + PER_SSHD]:
                f.write(f"ListenAddress {a}\n")
            f.write(f"HostKey {work}/hostkey\nAuthorizedKeysFile {work}/authorized_keys\n"
                    "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nUseDNS no\nMaxStartups 1000\n"
                    f"LogLevel ERROR\nPidFile {work}/sshd{k}.pid\nSetEnv HOME={work}/remote-home\n")
        log = open(f"{work}/sshd{k}.log", "w")
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                                      stdout=subprocess.DEVNULL, stderr=log))
    # Wait until every address accepts.
    deadline = time.time() + 20
    for a in addrs:
        while True:
            try:
                socket.create_connection((a, port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit(f"sshd on {a}:{port} did not start; see {work}/sshd*.log")
                time.sleep(0.05)
    # The OpenSSH-based tools read this configuration (and nothing of the real ~/.ssh).
    ssh_cfg = f"{work}/ssh_config"
    with open(ssh_cfg, "w") as f:
        f.write(f"Host *\n  Port {port}\n  User root\n  IdentityFile {home}/.ssh/id_ed25519\n"
                f"  IdentitiesOnly yes\n  UserKnownHostsFile {home}/.ssh/known_hosts\n"
                "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
                "  BatchMode yes\n  ControlMaster no\n  ControlPath none\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "RUST_LOG")}
    env.update(HOME=home, USER="root")

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
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)
EOP
