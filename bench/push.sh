#!/usr/bin/env bash
# Benchmark (issue 12): a push of a MIB MiB tree (default 20) to N hosts for each N in
# SIZES (default "1 8"), on emulated hosts (bench/netns.py: one network namespace per
# host, links shaped to RATE, default 100mbit, each way; RATE=none: unshaped veth), every
# tool in the same run on the same links, median of RUNS (default 3):
#   relay   deploy-client --order=rsync --relay (pipelined chunk stream; --relay-fanout K,
#           default 1: a chain)
#   plain   deploy-client --order=rsync --follow (every agent pulls from the source)
#   xargs   N rsyncs from the same source by xargs -P N (one per host namespace)
# The source (an rsync daemon) and the client sit on their own host behind one link.
# Each run starts from empty targets. Prints times and ratios (each tool's time over its
# 1-host time, and relay over xargs), and the load average before each row.
#
# TREE=parts (default: 4 files of MIB/4 MiB), one (one file of MIB MiB) or small
# (FILES files of 4 KiB, default 2000; MIB ignored).
# CLUSH=1 adds `clush --copy` (ClusterShell at /opt/deploy-venv/bin/clush) over an sshd in
# every host namespace (namespaces share one file system, so each sshd's ForceCommand
# runs the copy's remote side in that host's own target directory; scp -O: the legacy
# protocol, whose remote side is a command).
# OTHERS_MAX=N (default: all) runs plain and xargs only up to N hosts: above it their time
# is the source link's N copies (N x their 1-host time), minutes per run on shaped links.
#
# Usage: bench/push.sh [RUNS] [SIZES] [MIB] [RATE] [K]
# BENCH_BIN=DIR takes the binaries from DIR (default target/debug, built if missing).
# Needs root (network namespaces), rsync and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SIZES=${2:-"1 8"}
MIB=${3:-20}
RATE=${4:-100mbit}
K=${5:-1}
BIN=${BENCH_BIN:-$PWD/target/debug}
if [ -z "${BENCH_BIN:-}" ]; then
    cargo build --quiet -p deploy-agent -p deploy-client
fi
exec env TREE="${TREE:-parts}" CLUSH="${CLUSH:-0}" FILES="${FILES:-2000}" OTHERS_MAX="${OTHERS_MAX:-100000}" \
    python3 - "$BIN" "$RUNS" "$SIZES" "$MIB" "$RATE" "$K" <<'EOP'
import os, re, statistics, subprocess, sys, tempfile, time, json
sys.path.insert(0, "bench")
from netns import Net, available

bin_dir, runs, sizes, mib, rate, k = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split()], int(sys.argv[4]), sys.argv[5], sys.argv[6]
if not available():
    sys.exit("bench/push.sh: network namespaces unavailable (needs root / CAP_NET_ADMIN)")
tree, nfiles, others_max = os.environ["TREE"], int(os.environ["FILES"]), int(os.environ["OTHERS_MAX"])
work = tempfile.mkdtemp(prefix="deploy-push-bench-")
net = Net(f"push{os.getpid() % 100000}", rate=None if rate == "none" else rate)
try:
    shelf = f"{work}/shelf"
    os.makedirs(shelf)
    if tree == "parts":
        expect = {f"part{j}": mib << 18 for j in range(4)}
    elif tree == "one":
        expect = {"one": mib << 20}
    else:
        expect = {f"d{j // 100}/f{j}": 4096 for j in range(nfiles)}
    for name, size in expect.items():
        os.makedirs(os.path.dirname(f"{shelf}/{name}"), exist_ok=True)
        with open(f"{shelf}/{name}", "wb") as f:
            for _ in range(max(1, size >> 18)):
                f.write(os.urandom(min(size, 1 << 18)))
    src = net.add("src")
    with open(f"{work}/rsyncd.conf", "w") as f:
        f.write(f"use chroot = no\nuid = 0\ngid = 0\npid file = {work}/rsyncd.pid\n"
                f"max connections = 0\n[shelf]\npath = {shelf}\nread only = yes\n")
    net.popen("src", ["rsync", "--daemon", "--no-detach", f"--config={work}/rsyncd.conf",
                      f"--address={src}", "--port=873"], f"{work}/rsyncd.log")
    n_max = max(sizes)
    hosts = []
    for i in range(1, n_max + 1):
        d = f"{work}/a{i}"
        os.makedirs(f"{d}/target")
        ip = net.add(f"a{i}")
        with open(f"{d}/agent.ini", "w") as f:
            f.write(f"[server]\naddr = {ip}\nport = 3441\nkey_cipher = bench\nstate_dir = {d}/state\n"
                    "max_prefork = 1\n"
                    f"[allow::hosts]\nhost[] = 10.77.0.0/16\n[allow::paths]\npath[] = {d}/target\n"
                    f"[rsync::group::blob]\ndest = rsync://{src}:873/shelf/\n"
                    f"src = {d}/target/blob\n")
        log = f"{d}/agent.log"
        net.popen(f"a{i}", [f"{bin_dir}/deploy-agent", "--foreground", "--path", f"{d}/agent.ini"], log)
        hosts.append((f"a{i}", ip, d, log))
    use_clush = os.environ["CLUSH"] == "1"
    clush_bin = "/opt/deploy-venv/bin/clush"
    if use_clush:
        sd = f"{work}/ssh"
        os.makedirs(sd)
        for key in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{sd}/{key}"], check=True)
        subprocess.run(["cp", f"{sd}/user.pub", f"{sd}/authorized_keys"], check=True)
        with open(f"{sd}/ssh_config", "w") as f:
            f.write(f"Host *\n User root\n IdentityFile {sd}/user\n StrictHostKeyChecking no\n"
                    " UserKnownHostsFile /dev/null\n LogLevel ERROR\n")
        for name, ip, d, log in hosts:
            with open(f"{d}/sshd_config", "w") as f:
                f.write(f"Port 22\nListenAddress {ip}\nHostKey {sd}/host\n"
                        f"AuthorizedKeysFile {sd}/authorized_keys\nStrictModes no\nUsePAM no\n"
                        "PermitRootLogin yes\nPasswordAuthentication no\nMaxStartups 200\n"
                        f"PidFile {d}/sshd.pid\n"
                        f"ForceCommand mkdir -p {d}/target && cd {d}/target && exec sh -c \"$SSH_ORIGINAL_COMMAND\"\n")
            net.popen(name, ["/usr/sbin/sshd", "-D", "-e", "-f", f"{d}/sshd_config"], f"{d}/sshd.log")
    for name, ip, d, log in hosts:
        for _ in range(600):
            if "listening on" in open(log).read():
                break
            time.sleep(0.05)
        else:
            sys.exit(f"{name}: agent did not start: {open(log).read()[-2000:]}")

    def reset(n):
        for _, _, d, _ in hosts[:n]:
            subprocess.run(["rm", "-rf", f"{d}/target/blob", f"{d}/state/relay"], check=True)
        subprocess.run(["sync"])

    def check(n, out=""):
        for _, _, d, _ in hosts[:n]:
            for name, size in expect.items():
                p = f"{d}/target/blob/{name}"
                if not os.path.exists(p) or os.path.getsize(p) != size:
                    sys.exit(f"{p}: did not arrive whole\n{out[-3000:]}")

    def client(n, extra):
        targets = ",".join(f"{ip}:3441" for _, ip, _, _ in hosts[:n])
        argv = [f"{bin_dir}/deploy-client", "--hosts", targets, "--order=rsync", "--options=blob",
                "--thread-timeout", "900", "--format", "json", "-q"] + extra
        env = dict(os.environ, DEPLOY_KEY_CIPHER="bench")
        t = time.perf_counter()
        r = subprocess.run(net.cmd("src", argv), capture_output=True, text=True, env=env)
        total = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"client failed ({r.returncode}): {r.stderr[-3000:]}\n{r.stdout[-3000:]}")
        return total, r.stdout

    def relay(n):
        reset(n)
        total, out = client(n, ["--relay", "--relay-fanout", k])
        check(n, out)
        froms = [v["rsync"]["content"].get("from") for v in json.loads(out).values()]
        return total, sum(1 for f in froms if f == "source")

    def plain(n):
        reset(n)
        total, _ = client(n, ["--follow"])
        check(n)
        return total

    def xargs(n):
        reset(n)
        cmds = "\n".join(f"ip netns exec {net.ns(name)} rsync -a rsync://{src}:873/shelf/ {d}/target/blob/"
                         for name, _, d, _ in hosts[:n])
        t = time.perf_counter()
        r = subprocess.run(["xargs", "-P", str(n), "-I{}", "sh", "-c", "{}"], input=cmds,
                           capture_output=True, text=True)
        total = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"rsync failed: {r.stderr[:2000]}")
        check(n)
        return total

    what = {"parts": f"{mib} MiB (4 files)", "one": f"{mib} MiB (1 file)",
            "small": f"{nfiles} x 4 KiB files"}[tree]
    def clush(n):
        reset(n)
        ips = ",".join(ip for _, ip, _, _ in hosts[:n])
        # The tree as `blob` under each host's target (the remote side runs there).
        subprocess.run(["rm", "-rf", f"{work}/blob"], check=True)
        os.symlink(shelf, f"{work}/blob")
        argv = [clush_bin, "-w", ips, "-f", str(max(n, 1)), "-o", f"-O -F {work}/ssh/ssh_config",
                "--copy", f"{work}/blob/", "--dest", "."]
        t = time.perf_counter()
        r = subprocess.run(net.cmd("src", argv), capture_output=True, text=True)
        total = time.perf_counter() - t
        if r.returncode != 0:
            sys.exit(f"clush failed ({r.returncode}): {r.stderr[-2000:]}{r.stdout[-2000:]}")
        check(n, r.stderr)
        return total

    print(f"{what} from one source over {rate} links (tbf, each way), "
          f"relay fan-out {k}, median of {runs}; binaries {bin_dir}")
    tools = [("relay", None), ("plain", plain), ("xargs", xargs)]
    if use_clush:
        tools.append(("clush", clush))
    names = [t for t, _ in tools]
    print(f"{'hosts':>5} " + " ".join(f"{t:>8}" for t in names) + "  "
          + " ".join(f"{t + '/1':>8}" for t in names) + "  "
          + " ".join(f"{'relay/' + t:>12}" for t in names[1:]) + "  from source")
    base = None
    for n in sizes:
        rows = []
        load = open("/proc/loadavg").read().split()[0]
        others = n <= others_max
        nan = float("nan")
        for _ in range(runs):
            r, s = relay(n)
            rows.append([r] + [f(n) if others else nan for _, f in tools[1:]] + [s])
        med = [statistics.median(x[i] for x in rows) for i in range(len(tools))]
        src_pulls = statistics.median(x[-1] for x in rows)
        if base is None:
            base = med
        print(f"{n:>5} " + " ".join(f"{m:7.2f}s" for m in med) + "  "
              + " ".join(f"{m / b:7.2f}x" for m, b in zip(med, base)) + "  "
              + " ".join(f"{med[0] / m:11.2f}x" for m in med[1:])
              + f"  {src_pulls:g}   load {load}; relay runs "
              + " ".join(f"{x[0]:.2f}" for x in rows), flush=True)
finally:
    net.close()
    subprocess.run(["rm", "-rf", work])
EOP
