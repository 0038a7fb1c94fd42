"""Processes and their configuration for the agent and proxy benchmarks (bench/*.sh): the
one place that writes agent and proxy inis and starts daemons, learnt from their
`listening on` lines; a read-only rsync daemon and a nats-server on loopback; their end.

    procs = Procs()
    addrs = procs.agent(bin_dir, f"{work}/a1", addr="127.0.9.1", paths=[...])
    proxy, port = procs.proxy(bin_dir, work, {"fleet": addrs}, client={"concurrency": 1024})
    ...
    procs.close()                      # SIGTERM, then SIGKILL after 10 s

`ini(path, sections)` writes any ini (a list value is one line per item, for `key[]`);
`agent_ini` / `proxy_ini` hold the benchmarks' defaults (`bench` keys, loopback, port 0),
every one of which a caller can override or extend. `Procs.start(cmd, log, expect)`
returns the addresses a daemon listens on, `Procs.spawn` the process too;
`Procs.rsyncd(work, path)` serves `path` as a module and returns its port;
`Procs.nats_server(work)` returns a nats:// URL. `loopback(n)` is n addresses 127.0.x.y
(one agent listening on all of them stands for n agents); `peak_rss_mib(pid)` is the
largest VmHWM of a process and its children; `timed(cmd, runs, what)` the sorted wall
times of a command; `parallel_rsync(dests, n, src)` the rsync-alone baseline.
"""
import os, re, signal, socket, subprocess, sys, time

LISTENING = r"listening on (\S+)"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def clean(path):
    subprocess.run(["rm", "-rf", path], check=True)


def loopback(n):
    """n loopback addresses, 127.0.1.1 … 127.0.1.250, 127.0.2.1 …"""
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]


def peak_rss_mib(pid):
    """The largest peak RSS (VmHWM) of `pid` and its children, in MiB."""
    best = 0
    for p in [pid] + [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        except FileNotFoundError:
            pass
    return best / 1024


def parallel_rsync(dests, n, src):
    """The transfer benchmarks' baseline: n `rsync --archive src dests/<i>/` at once
    (`xargs -P n`), each into an empty directory; their wall time in seconds (`dests`
    removed before and after)."""
    clean(dests)
    for i in range(1, n + 1):
        os.makedirs(f"{dests}/{i}")
    subprocess.run(["sync"])
    t = time.perf_counter()
    r = subprocess.run(f"seq 1 {n} | xargs -P {n} -I{{}} rsync --archive {src} {dests}/{{}}/",
                       shell=True, capture_output=True, text=True)
    total = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"rsync failed: {r.stderr[:2000]}")
    clean(dests)
    return total


def timed(cmd, runs, what, each=None):
    """Runs `cmd` `runs` times, `each(result)` after every run if given (untimed); the
    wall times in ms, sorted (exits naming `what` if a run fails)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            sys.exit(f"{what} failed: {r.stdout.decode()[:1000]} {r.stderr.decode()[:2000]}")
        if each:
            each(r)
    return sorted(times)


def ini(path, sections):
    """Writes `sections` ({section: {key: value}}) as an ini at `path`; a list value is
    one line per item (for `key[]`), a None value is left out. Returns `path`."""
    with open(path, "w") as f:
        for name, keys in sections.items():
            f.write(f"[{name}]\n")
            for k, v in keys.items():
                for item in v if isinstance(v, (list, tuple)) else [v]:
                    if item is not None:
                        f.write(f"{k} = {item}\n")
    return path


def jobs_ini(work):
    """`{work}/jobs.ini` with the job `service:echo` (`/bin/echo %s`); its path."""
    return ini(f"{work}/jobs.ini", {"jobs": {"service:echo": "/bin/echo %s"}})


def agent_ini(d, addr="127.0.0.1", key="bench", prefork=1, listen=(), hosts=("127.0.0.0/8",),
              paths=(), jobs=None, server=None, sections=None):
    """`{d}/agent.ini` (d created): [server] on `addr` port 0 (none with `addr=None`,
    for an agent with `tcp = off`; plus `listen[]` addresses on port 0), `key_cipher =
    key`, state in `{d}/state`, `max_prefork = prefork` and `server`'s keys;
    [allow::hosts] `hosts`; [allow::paths] `paths`; [jobs] `jobs` (a path); then
    `sections`. Returns its path."""
    os.makedirs(d, exist_ok=True)
    s = {"addr": addr, "port": None if addr is None else 0, "key_cipher": key,
         "state_dir": f"{d}/state", "max_prefork": prefork, **(server or {})}
    if listen:
        s["listen[]"] = [f"{a}:0" for a in listen]
    doc = {"server": s}
    if hosts:
        doc["allow::hosts"] = {"host[]": list(hosts)}
    if paths:
        doc["allow::paths"] = {"path[]": list(paths)}
    if jobs:
        doc["jobs"] = {"path": jobs}
    doc.update(sections or {})
    return ini(f"{d}/agent.ini", doc)


def proxy_ini(work, groups, name="proxy", key="bench", names=None, server=None, client=None,
              sections=None):
    """`{work}/{name}.ini` and its API file `{work}/{name}-api.ini`: API key `key` for every
    group of `groups` ({group: [servers]}), `names` ({key: name}) if given; [server] on
    127.0.0.1 port 0, two workers, and `server`'s keys; [client] `key_cipher = bench` and
    `client`'s keys; [allow::hosts] 127.0.0.1; then `sections`. Returns the ini's path."""
    api = {"keys": {f"{key}[]": ",".join(groups)}}
    if names:
        api["names"] = dict(names)
    api["servers"] = {f"{g}[]": list(servers) for g, servers in groups.items()}
    ini(f"{work}/{name}-api.ini", api)
    doc = {"server": {"addr": "127.0.0.1", "port": 0, "max_prefork": 2, **(server or {})},
           "client": {"key_cipher": "bench", **(client or {})},
           "allow::hosts": {"host[]": "127.0.0.1"},
           "api": {"path": f"{work}/{name}-api.ini"}}
    doc.update(sections or {})
    return ini(f"{work}/{name}.ini", doc)


class Procs:
    def __init__(self):
        self.procs = []

    def spawn(self, cmd, log, expect, env=None, pattern=LISTENING, timeout=60):
        """Starts a daemon whose standard error goes to `log`; waits for `expect` matches
        of `pattern` (by default `listening on ADDR` lines) and returns the process and
        what the pattern's group caught."""
        f = open(log, "w+")
        p = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL, env=env)
        self.procs.append(p)
        deadline = time.time() + timeout
        while time.time() < deadline:
            f.seek(0)
            found = re.findall(pattern, f.read())
            if len(found) >= expect:
                return p, found
            if p.poll() is not None:
                f.seek(0)
                sys.exit(f"{cmd[0]} exited: {f.read()[-2000:]}")
            time.sleep(0.05)
        f.seek(0)
        sys.exit(f"{cmd[0]} did not start: {f.read()[-2000:]}")

    def start(self, cmd, log, expect, env=None):
        """`spawn` for the addresses alone."""
        return self.spawn(cmd, log, expect, env)[1]

    def agent(self, bin_dir, d, expect=1, env=None, quiet=True, pattern=LISTENING, **config):
        """Writes `{d}/agent.ini` (`agent_ini(d, **config)`) and starts deploy-agent on it
        (log `{d}/agent.log`, `-q` unless `quiet` is false); what `pattern` caught,
        `expect` times: by default the addresses it listens on."""
        path = agent_ini(d, **config)
        cmd = [f"{bin_dir}/deploy-agent", "--foreground", *(["-q"] if quiet else []), "--path", path]
        return self.spawn(cmd, f"{d}/agent.log", expect, env, pattern, timeout=120)[1]

    def proxy(self, bin_dir, work, groups, name="proxy", **config):
        """Writes the proxy's files (`proxy_ini(work, groups, name, **config)`) and starts
        deploy-proxy (log `{work}/{name}.log`); the process and its port."""
        path = proxy_ini(work, groups, name, **config)
        p, addrs = self.spawn([f"{bin_dir}/deploy-proxy", "--foreground", "-q", "--path", path],
                              f"{work}/{name}.log", 1)
        return p, addrs[0].rsplit(":", 1)[1]

    def nats_server(self, work, server=None):
        """A nats-server on 127.0.0.1, a random port (log `{work}/nats.log`); its URL."""
        server = server or os.environ.get("NATS_SERVER") or "nats-server"
        _, urls = self.spawn([server, "-a", "127.0.0.1", "-p", "-1"], f"{work}/nats.log", 1,
                             pattern=r"Listening for client connections on (\S+)")
        return "nats://" + urls[0]

    def rsyncd(self, work, path, module="shelf"):
        """A read-only rsync daemon on 127.0.0.1 serving `path` as `module`; its port."""
        port = free_port()
        with open(f"{work}/rsyncd.conf", "w") as f:
            f.write(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                    f"pid file = {work}/rsyncd.pid\nmax connections = 0\n"
                    f"[{module}]\npath = {path}\nread only = yes\n")
        self.procs.append(subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={work}/rsyncd.conf",
             "--address=127.0.0.1", f"--port={port}"], stderr=open(f"{work}/rsyncd.log", "w")))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        return port

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
