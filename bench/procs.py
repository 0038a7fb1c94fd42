"""Processes for the agent benchmarks (bench/rollout.sh, bench/follow.sh): daemons learnt
from their `listening on` lines, a read-only rsync daemon on loopback, and their end.

`Procs()` keeps every process it starts; `close()` stops them (SIGTERM, then SIGKILL after
10 s). `start(cmd, log, expect, env)` returns the addresses a daemon listens on;
`rsyncd(work, path)` serves `path` as the module `shelf` and returns its port.
"""
import os, re, signal, socket, subprocess, sys, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def clean(path):
    subprocess.run(["rm", "-rf", path], check=True)


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, cmd, log, expect, env=None):
        """Starts a daemon whose standard error goes to `log`; waits for `expect`
        `listening on ADDR` lines and returns those addresses."""
        f = open(log, "w+")
        p = subprocess.Popen(cmd, stderr=f, stdout=subprocess.DEVNULL, env=env)
        self.procs.append(p)
        deadline = time.time() + 30
        while time.time() < deadline:
            f.seek(0)
            lines = re.findall(r"listening on (\S+)", f.read())
            if len(lines) >= expect:
                return lines
            if p.poll() is not None:
                f.seek(0)
                sys.exit(f"{cmd[0]} exited: {f.read()}")
            time.sleep(0.05)
        sys.exit(f"{cmd[0]} did not start")

    def rsyncd(self, work, path):
        """A read-only rsync daemon on 127.0.0.1 serving `path` as `shelf`; its port."""
        port = free_port()
        with open(f"{work}/rsyncd.conf", "w") as f:
            f.write(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                    f"pid file = {work}/rsyncd.pid\nmax connections = 0\n"
                    f"[shelf]\npath = {path}\nread only = yes\n")
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
