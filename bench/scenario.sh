#!/usr/bin/env bash
# Benchmark: `deploy-client scenario apply` (default target: prepare, then start) of a
# scenario of 3 apps x N nodes (default 20), each node its own deploy-agent process with
# [scenarios] on. Apps are ordered 1, 2, 3 in both targets, so the run has a push stage
# and six script stages. Reports the total time and the time spent between orders: each
# script prints the node's clock (`date +%s%N`, one machine here, so one clock) into
# $OCTOPODA_OUTPUT; for each barrier, the earliest script of the next order minus the
# latest script of the previous one (a reply back, the client's bookkeeping, a request
# out, a shell started on the node).
#
# Baseline, in the same run: Octopoda's way, one application at a time: the same three
# apps as three one-app scenario folders of the same name (so the same NodeApps, the
# same napp orders), applied one after the other, each app's nodes in parallel. The
# ratio is ours / one-at-a-time (each apply is its own client process: that start-up,
# a few ms, is in the baseline's time three times).
#
# Usage: bench/scenario.sh [RUNS] [N] [KIB]   (default 3 runs, 20 nodes, 256 KiB of
# sources per app). BENCH_BIN=DIR takes the binaries from DIR (no build). Needs python3.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
N=${2:-20}
KIB=${3:-256}
. bench/bin.sh
bench_bin deploy-agent deploy-client
exec python3 - "$BIN" "$RUNS" "$N" "$KIB" <<'EOP'
import json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "bench")
from procs import Procs, clean

bin_dir, runs, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
work = tempfile.mkdtemp(prefix="deploy-scenario-bench-")
procs = Procs()
try:
    nodes = []
    for i in range(n):
        d = f"{work}/agent{i}"
        os.makedirs(f"{d}/allowed/ws")
        addrs = procs.agent(bin_dir, d, quiet=False, key="bench-secret", hosts=["127.0.0.1"],
                            paths=[f"{d}/allowed"],
                            sections={"scenarios": {"enabled": "on", "workspace": f"{d}/allowed/ws"}})
        nodes.append(addrs[0])
    folder = f"{work}/bench"
    yaml = "name: bench\ndescription: bench\napplications:\n"
    for a, order in (("one", 1), ("two", 2), ("three", 3)):
        os.makedirs(f"{folder}/{a}/src")
        os.makedirs(f"{folder}/{a}/scripts")
        with open(f"{folder}/{a}/src/blob", "wb") as f:
            f.write(os.urandom(kib * 1024))
        for t in ("prepare", "start", "stop", "purge"):
            with open(f"{folder}/{a}/scripts/{t}.sh", "w") as f:
                f.write(f"#!/bin/sh\ndate +%s%N >> \"$OCTOPODA_OUTPUT\"\n")
        yaml += (f"- name: {a}\n  description: x\n  scriptpath: {a}/scripts\n"
                 f"  sourcepath: {a}/src\n  nodes:\n")
        yaml += "".join(f"    - '{node}'\n" for node in nodes)
        yaml += "  script:\n" + "".join(
            f"    - target: {t}\n      file: {t}.sh\n      order: {order}\n"
            for t in ("prepare", "start", "stop", "purge"))
    with open(f"{folder}/deployment.yaml", "w") as f:
        f.write(yaml)
    # The baseline's folders: one app each, same scenario name, same files.
    singles = []
    for a, order in (("one", 1), ("two", 2), ("three", 3)):
        one = f"{work}/single-{a}"
        for sub in ("src", "scripts"):
            os.makedirs(f"{one}/{a}/{sub}")
            for name in os.listdir(f"{folder}/{a}/{sub}"):
                os.link(f"{folder}/{a}/{sub}/{name}", f"{one}/{a}/{sub}/{name}")
        text = "name: bench\ndescription: bench\napplications:\n"
        text += (f"- name: {a}\n  description: x\n  scriptpath: {a}/scripts\n"
                 f"  sourcepath: {a}/src\n  nodes:\n")
        text += "".join(f"    - '{node}'\n" for node in nodes)
        text += "  script:\n" + "".join(
            f"    - target: {t}\n      file: {t}.sh\n      order: {order}\n"
            for t in ("prepare", "start", "stop", "purge"))
        with open(f"{one}/deployment.yaml", "w") as f:
            f.write(text)
        singles.append(one)
    env = dict(os.environ, DEPLOY_KEY_CIPHER="bench-secret", DEPLOY_CLIENT_CONFIG="")
    totals, gaps, baselines = [], [], []
    for r in range(runs):
        # Each run from empty NodeApps: a purge first (its errors on a fresh fleet ignored).
        subprocess.run([f"{bin_dir}/deploy-client", "scenario", "apply", folder, "purge"],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        p = subprocess.Popen([f"{bin_dir}/deploy-client", "scenario", "apply", folder,
                              "-m", f"run {r}", "--format=jsonl"],
                             env=env, stdout=subprocess.PIPE, text=True)
        stamps, failed = {}, 0
        for line in p.stdout:
            ev = json.loads(line)
            if ev.get("kind") != "step":
                continue
            failed += 0 if ev["ok"] else 1
            if ev["action"] == "script":
                key = (ev["target"], ev["order"])
                stamps.setdefault(key, []).append(int(ev["output"].split()[0]))
        code = p.wait()
        total = time.monotonic() - start
        if code != 0 or failed:
            sys.exit(f"run {r}: exit {code}, {failed} failed steps")
        stages = sorted(stamps, key=lambda k: (k[0] != "prepare", k[1]))
        run_gaps = [(min(stamps[b]) - max(stamps[a])) / 1e9 for a, b in zip(stages, stages[1:])]
        totals.append(total)
        gaps.append(run_gaps)
        # The baseline: the same NodeApps from empty, one app after the other.
        subprocess.run([f"{bin_dir}/deploy-client", "scenario", "apply", folder, "purge"],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        for one in singles:
            b = subprocess.run([f"{bin_dir}/deploy-client", "scenario", "apply", one,
                                "-m", f"run {r}", "--format=jsonl"],
                               env=env, stdout=subprocess.DEVNULL)
            if b.returncode != 0:
                sys.exit(f"baseline run {r}: {one}: exit {b.returncode}")
        base = time.monotonic() - start
        baselines.append(base)
        print(f"run {r}: total {total:.2f} s, one app at a time {base:.2f} s "
              f"(ratio {total / base:.2f}); between orders (ms): "
              + " ".join(f"{g * 1000:.1f}" for g in run_gaps))
    flat = [g for gs in gaps for g in gs]
    med, bmed = statistics.median(totals), statistics.median(baselines)
    print(f"{n} nodes x 3 apps, {kib} KiB each: total median {med:.2f} s; "
          f"one app at a time median {bmed:.2f} s; ratio {med / bmed:.2f}; "
          f"between orders median {statistics.median(flat) * 1000:.1f} ms, "
          f"max {max(flat) * 1000:.1f} ms; load average {os.getloadavg()[0]:.1f}")
finally:
    procs.close()
    clean(work)
EOP
