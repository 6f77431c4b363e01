"""Discovery at scale with real sockets: time to a full mesh, and the CPU of an idle node.

    python tests/discovery_scale.py host [--nodes 200] [--processes 10] [--idle 5]
    python tests/discovery_scale.py netns [--hosts 8] [--per-host 25] [--idle 5]   (root)

``host``: the nodes split over processes on loopback, one host. ``netns``: one process per
"host", each a network namespace on one bridge (addresses in 198.18.0.0/15, subnet scope; the
namespaces are deleted afterwards, failure or not). Every worker makes its nodes, waits for
"go", starts them all at once and reports when each of its nodes knows every other node (one
machine: one monotonic clock, namespaces included); then, with the mesh idle, the CPU its
process uses over ``--idle`` seconds, per node. Prints one JSON object; the figures live in
docs/discovery.md. Not a test: a benchmark, perturbed by whatever else the machine runs (the
load average before and after is printed with the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import time
from typing import Any

WORKER = r"""
import json, sys, time
sys.path.insert(0, SRC)
from zmqkit import Node

config = json.loads(sys.argv[1])
names, total, idle = config.pop("names"), config.pop("total"), config.pop("idle")
nodes = [Node(name, **config) for name in names]
print("ready", flush=True)
go = float(sys.stdin.readline())
for node in nodes:
    node.start()
started = time.monotonic()
deadline = started + 60
while any(len(node.peers()) < total - 1 for node in nodes) and time.monotonic() < deadline:
    time.sleep(0.005)
converged = time.monotonic()
seen = min(len(node.peers()) for node in nodes)
time.sleep(1.0)  # the last answers and exchanges settle
cpu, wall = time.process_time(), time.monotonic()
time.sleep(idle)
share = (time.process_time() - cpu) / (time.monotonic() - wall)
sent = sum(node.stats().get("sent", 0) for node in nodes)
print("result", json.dumps({"started": started - go, "converged": converged - go, "seen": seen,
      "cpu_per_node": share / len(nodes), "sent": sent}), flush=True)
sys.stdin.readline()
for node in nodes:
    node.close()
"""

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workers(groups: list[tuple[list[str], list[str], dict[str, Any]]], total: int,
                idle: float) -> dict[str, Any]:
    """Start one worker per group (prefix, names, node options), start all nodes at once."""
    load_before = os.getloadavg()
    workers = []
    try:
        for prefix, names, options in groups:
            config = {"names": names, "total": total, "idle": idle, **options}
            workers.append(subprocess.Popen(
                [*prefix, sys.executable, "-c", f"SRC = {SRC!r}\n" + WORKER, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        go = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(f"{go}\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.startswith("result "), line
            results.append(json.loads(line.split(" ", 1)[1]))
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("\n")
            worker.stdin.flush()
    finally:
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
    cpu = [r["cpu_per_node"] * 100 for r in results]
    return {
        "nodes": total,
        "processes": len(groups),
        "full_mesh_s": round(max(r["converged"] for r in results), 3),
        "last_start_s": round(max(r["started"] for r in results), 3),
        "fewest_peers_seen": min(r["seen"] for r in results),
        "idle_cpu_per_node_percent": {"mean": round(sum(cpu) / len(cpu), 3),
                                      "max": round(max(cpu), 3)},
        "datagrams_sent": sum(r["sent"] for r in results),
        "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": os.getloadavg()},
    }


def host(nodes: int, processes: int, idle: float) -> dict[str, Any]:
    port = random.randint(20_000, 40_000)
    names = [f"mesh-{i}" for i in range(nodes)]
    groups = [([], names[i::processes], {"port": port}) for i in range(processes)]
    return run_workers(groups, nodes, idle)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns(hosts: int, per_host: int, idle: float) -> dict[str, Any]:
    """``hosts`` namespaces on one bridge (in a namespace of its own), ``per_host`` nodes each."""
    session = f"zk-{secrets.token_hex(3)}"
    switch = f"{session}-switch"
    made = [switch]
    try:
        ip("netns", "add", switch)
        ip("-n", switch, "link", "add", "zk-br", "type", "bridge")
        ip("-n", switch, "link", "set", "zk-br", "up")
        groups = []
        port = random.randint(20_000, 40_000)
        for h in range(hosts):
            space = f"{session}-h{h}"
            ip("netns", "add", space)
            made.append(space)
            ip("-n", space, "link", "set", "lo", "up")
            ip("-n", space, "link", "add", "zk-eth", "type", "veth", "peer", "name", f"zk-p{h}",
               "netns", switch)
            ip("-n", space, "addr", "add", f"198.18.10.{h + 1}/24", "brd", "+", "dev", "zk-eth")
            ip("-n", space, "link", "set", "zk-eth", "up")
            ip("-n", switch, "link", "set", f"zk-p{h}", "master", "zk-br")
            ip("-n", switch, "link", "set", f"zk-p{h}", "up")
            names = [f"h{h}-{i}" for i in range(per_host)]
            options = {"port": port, "scope": "subnet", "interface": "zk-eth"}
            groups.append((["ip", "netns", "exec", space], names, options))
        return run_workers(groups, hosts * per_host, idle)
    finally:
        for space in made:
            subprocess.run(["ip", "netns", "del", space], capture_output=True, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    one = kinds.add_parser("host", help="nodes in processes on loopback")
    one.add_argument("--nodes", type=int, default=200)
    one.add_argument("--processes", type=int, default=10)
    many = kinds.add_parser("netns", help="one process per namespace, on one bridge (root)")
    many.add_argument("--hosts", type=int, default=8)
    many.add_argument("--per-host", type=int, default=25)
    for sub in (one, many):
        sub.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    if args.kind == "host":
        result = host(args.nodes, args.processes, args.idle)
    else:
        result = netns(args.hosts, args.per_host, args.idle)
    print(json.dumps({"run": args.kind, **result}))


if __name__ == "__main__":
    main()
