"""Emulated networks for benchmarks and tests (issue 12): hosts as Linux network
namespaces on this machine, nothing routed to the outside.

    net = Net("push1", rate="100mbit", delay="1ms", loss=None)
    ip = net.add("src")                 # namespace dpl-push1-src, address 10.77.0.x/16
    p = net.popen("src", ["rsync", "--daemon", ...], log)
    net.close()                         # also at exit and on SIGINT/SIGTERM

A "hub" namespace (dpl-<run>-hub) holds a bridge; each host is a namespace
dpl-<run>-<name> with a veth pair `eth0` <-> `h<i>` into that bridge and a private address
in 10.77.0.0/16 (no default route, so nothing leaves the machine). Each direction of each
link is shaped with netem (rate, optional delay and loss): the host's upload on its
`eth0`, its download on the hub's end. Processes started with `popen` run inside the
host's namespace and are killed before the namespaces are deleted; `close` is idempotent
and registered with atexit and for SIGINT/SIGTERM, so no namespace leaks.

Needs root (CAP_NET_ADMIN), iproute2 and tc. `available()` says whether this works here.
"""
import atexit, os, signal, subprocess, sys


def _run(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def available():
    """Whether namespaces can be made here (root with CAP_NET_ADMIN, iproute2)."""
    name = f"dpl-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except (RuntimeError, FileNotFoundError):
        return False
    _run("ip", "netns", "del", name, check=False)
    return True


class Net:
    def __init__(self, run, rate="100mbit", delay=None, loss=None):
        self.run = run
        self.rate, self.delay, self.loss = rate, delay, loss
        self.hub = f"dpl-{run}-hub"
        self.hosts = {}  # name -> (namespace, address)
        self.procs = []
        self.closed = False
        atexit.register(self.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        _run("ip", "netns", "add", self.hub)
        _run("ip", "-n", self.hub, "link", "set", "lo", "up")
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")

    def _on_signal(self, signum, _frame):
        self.close()
        sys.exit(128 + signum)

    def _shape(self, ns, dev):
        # Rate with tbf; delay and loss need netem (absent from some kernels: this one
        # says "Specified qdisc kind is unknown", and the error is raised as such).
        if self.delay or self.loss:
            cmd = ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:",
                   "netem", "limit", "10000"]
            if self.delay:
                cmd += ["delay", self.delay]
            if self.loss:
                cmd += ["loss", self.loss]
            _run(*cmd)
            parent = ["parent", "1:1", "handle", "10:"]
        else:
            parent = ["root"]
        if self.rate:
            _run("tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, "tbf", "rate", self.rate,
                 "burst", "256kb", "latency", "100ms")

    def add(self, name):
        """A host: its namespace, link and address; returns the address."""
        i = len(self.hosts) + 1
        ns = f"dpl-{self.run}-{name}"
        ip = f"10.77.{i // 200}.{i % 200 + 1}"
        _run("ip", "netns", "add", ns)
        self.hosts[name] = (ns, ip)
        _run("ip", "-n", self.hub, "link", "add", f"h{i}", "type", "veth",
             "peer", "name", "eth0", "netns", ns)
        _run("ip", "-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        self._shape(ns, "eth0")
        self._shape(self.hub, f"h{i}")
        return ip

    def ns(self, name):
        return self.hosts[name][0]

    def ip(self, name):
        return self.hosts[name][1]

    def cmd(self, name, argv):
        """`argv` to run inside host `name`."""
        return ["ip", "netns", "exec", self.ns(name)] + list(argv)

    def popen(self, name, argv, log, env=None):
        """Starts a long-running process inside host `name` (killed by `close`)."""
        p = subprocess.Popen(self.cmd(name, argv), stdout=subprocess.DEVNULL,
                             stderr=open(log, "w"), env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def close(self):
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        # Whatever still runs in a namespace (an agent's detached children) goes too.
        for ns, _ in list(self.hosts.values()) + [(self.hub, None)]:
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", ns, check=False)


if __name__ == "__main__":
    # Self-check: two hosts, a ping across the shaped bridge, teardown.
    if not available():
        sys.exit("network namespaces unavailable here (need root / CAP_NET_ADMIN)")
    net = Net(f"selftest{os.getpid()}", rate="100mbit")
    a, b = net.add("a"), net.add("b")
    # 10 MiB across one shaped link: about 0.84 s at 100 Mbit/s.
    sink = "import socket,sys\ns=socket.socket()\ns.bind((sys.argv[1],9000))\ns.listen()\nc,_=s.accept()\nwhile c.recv(1<<16): pass\n"
    net.popen("b", ["python3", "-c", sink, b], "/dev/null")
    import time
    time.sleep(0.5)
    t = time.time()
    r = subprocess.run(net.cmd("a", ["python3", "-c",
        f"import socket;s=socket.create_connection(('{b}',9000));s.sendall(bytes(10<<20));s.close()"]),
        capture_output=True, text=True)
    print(r.stderr.strip() or f"10 MiB a -> b in {time.time() - t:.2f} s")
    net.close()
    left = [l for l in _run("ip", "netns", "list").stdout.splitlines() if "selftest" in l]
    print("namespaces left:", left or "none")
