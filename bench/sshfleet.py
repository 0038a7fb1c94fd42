"""sshd instances on loopback for the SSH benchmarks (bench/ssh.sh, bench/ssh-memory.sh).

`Fleet(n)` starts sshd on n addresses (127.0.x.y), 16 per sshd (its ListenAddress
limit), all on one port, with one host key, one user key for root, a known_hosts with
every address, and an empty HOME for the sessions (sshd's SetEnv): Debian's bash
sources ~/.bashrc for commands run by sshd, and a heavy root .bashrc would otherwise
dominate every measure. `env` is the environment for a client (HOME, USER, no agent);
`close()` stops everything.
"""
import os, shutil, socket, subprocess, sys, tempfile, time

PER_SSHD = 16


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)


class Fleet:
    def __init__(self, n):
        for tool in ("/usr/sbin/sshd", "ssh-keygen"):
            if not shutil.which(tool) and not os.path.exists(tool):
                sys.exit(f"{tool} is missing: apt-get install -y openssh-server openssh-client")
        self.procs = []
        self.work = work = tempfile.mkdtemp(prefix="deploy-bench-ssh-")
        self.home = home = f"{work}/home"
        os.makedirs(f"{home}/.ssh")
        os.makedirs(f"{work}/remote-home")
        os.makedirs("/run/sshd", exist_ok=True)
        self.addrs = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            self.port = port = s.getsockname()[1]
        keygen(f"{home}/.ssh/id_ed25519")
        keygen(f"{work}/hostkey")
        shutil.copy(f"{home}/.ssh/id_ed25519.pub", f"{work}/authorized_keys")
        hostkey = " ".join(open(f"{work}/hostkey.pub").read().split()[:2])
        with open(f"{home}/.ssh/known_hosts", "w") as f:
            for a in self.addrs:
                f.write(f"[{a}]:{port} {hostkey}\n")
        for k in range(0, n, PER_SSHD):
            cfg = f"{work}/sshd_config{k}"
            with open(cfg, "w") as f:
                f.write(f"Port {port}\n")
                for a in self.addrs[k:k + PER_SSHD]:
                    f.write(f"ListenAddress {a}\n")
                f.write(f"HostKey {work}/hostkey\nAuthorizedKeysFile {work}/authorized_keys\n"
                        "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
                        "KbdInteractiveAuthentication no\nUseDNS no\nMaxStartups 1000\n"
                        f"LogLevel ERROR\nPidFile {work}/sshd{k}.pid\nSetEnv HOME={work}/remote-home\n")
            log = open(f"{work}/sshd{k}.log", "w")
            self.procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", cfg],
                                               stdout=subprocess.DEVNULL, stderr=log))
        deadline = time.time() + 20
        for a in self.addrs:
            while True:
                try:
                    socket.create_connection((a, port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        self.close()
                        sys.exit(f"sshd on {a}:{port} did not start")
                    time.sleep(0.05)
        self.env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "RUST_LOG")}
        self.env.update(HOME=home, USER="root")

    def hosts(self, n):
        """`ssh://addr:port` of the first n hosts, comma separated."""
        return ",".join(f"ssh://{a}:{self.port}" for a in self.addrs[:n])

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)
