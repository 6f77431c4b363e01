"""Faults in test hosts: links cut and throttled between namespaces, processes SIGKILLed mid-work.

The hosts are network namespaces built by each test with ``test_netns.Lab`` (names
``zk-<session>-<role>``, veth pairs created inside the namespaces, addresses in 198.18.0.0/15
only, all deleted afterwards, failure or not; skipped with the reason when not root). Every node
runs in a child process inside its namespace (``Child``, a ``nodeproc.NodeProcess`` running one
of the scripts below) and answers one JSON line per command, so the test can cut a link, throttle
it with ``tc ... tbf`` or SIGKILL a process while work is in flight, and then check the promises:

- an RPC call across a cut link fails with ``Timeout`` in its deadline, and calls work again once
  the link is back; a throttled link only makes calls slower; a killed server hangs no call;
- the task farm completes every task (none lost) when a worker is SIGKILLed or cut off;
- replicated state converges when a replica is SIGKILLed mid-write and after a partition heals.

``netem`` (loss and delay) is tried first and the test skips with "this kernel has no netem"
where the kernel lacks it, as these machines' kernels do. Faults injected and survived are
written to the test output as ``figures:`` lines (``pytest -rP``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeproc import NodeProcess
from test_netns import SESSION, Lab, ip, namespaces, skip_reason

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
SLACK = 0.6  # how far past its deadline a failing call may report, across two processes
PARTITION = {"interval": 0.3, "expiry": 4.0}  # a cut shorter than the expiry is not a departure
FAST = {"interval": 0.2, "expiry": 1.0}  # for the farm and state: lose a dead node quickly

RPC_SERVER = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import rpc

config = json.loads(sys.argv[1])
name = config.pop("name")

class Service:
    def add(self, a, b):
        return a + b

    def size(self, text):
        return len(text)

    def blob(self, n):
        return "x" * n

    @rpc.blocking
    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

with zmqkit.Node(name, **config) as node:
    rpc.serve(node, Service())
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host}), flush=True)
    sys.stdin.read()
"""

RPC_CALLER = r"""
import asyncio, json, sys, time
import zmqkit
from zmqkit.patterns import rpc

config = json.loads(sys.argv[1])
name, server = config.pop("name"), config.pop("server")

def outcome(start, result=None, error=None):
    out = {"elapsed": time.monotonic() - start}
    if error is None:
        out.update(ok=True, result=result if not isinstance(result, str) else len(result))
    else:
        out.update(ok=False, error=type(error).__name__, message=str(error))
    return out

async def gather(node, command):
    async with rpc.AsyncClient(node, server, timeout=command["timeout"]) as client:
        async def one(args):
            start = time.monotonic()
            try:
                return outcome(start, await client.call_with(command["method"], args))
            except zmqkit.ZmqkitError as exc:
                return outcome(start, error=exc)
        return await asyncio.gather(*(one(args) for args in command["calls"]))

with zmqkit.Node(name, **config) as node, rpc.Client(node, server) as client:
    node.wait_for(server, timeout=10, role="rpc")
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "call":
            start = time.monotonic()
            try:
                result = client.call_with(command["method"], command["args"],
                                          timeout=command["timeout"])
                print("result", json.dumps(outcome(start, result)), flush=True)
            except zmqkit.ZmqkitError as exc:
                print("result", json.dumps(outcome(start, error=exc)), flush=True)
        elif command["op"] == "gather":
            print("results", json.dumps(asyncio.run(gather(node, command))), flush=True)
"""

FARM_WORKER = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import farm

config = json.loads(sys.argv[1])
name, slots = config.pop("name"), config.pop("slots")

with zmqkit.Node(name, **config) as node:
    def work(task):
        time.sleep(task["sleep"])
        return {"double": task["n"] * 2, "by": name}

    farm.serve_worker(node, work, farm="jobs", slots=slots)
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host}), flush=True)
    sys.stdin.read()
"""

FARM_SUBMITTER = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import farm

config = json.loads(sys.argv[1])
name, workers = config.pop("name"), config.pop("workers")

with zmqkit.Node(name, **config) as node, \
        farm.Submitter(node, "jobs", worker_expiry=1.5) as jobs:
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host}), flush=True)
    deadline = time.monotonic() + 10
    nodes = lambda: len({info.node for info in jobs.workers()})  # (a worker has a socket per slot)
    while nodes() < workers and time.monotonic() < deadline:
        time.sleep(0.02)
    print("workers", nodes(), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        ids = {jobs.submit({"n": n, "sleep": command["sleep"]}): n for n in range(command["count"])}
        results, errors, by = {}, [], {}
        try:
            for done in jobs.as_completed(timeout=command["timeout"]):
                if done.error is not None:
                    errors.append(f"{ids[done.task_id]}: {done.error}")
                else:
                    results[ids[done.task_id]] = done.value["double"]
                    by[done.value["by"]] = by.get(done.value["by"], 0) + 1
                if len(results) + len(errors) == 5:
                    print("progress", flush=True)
        except zmqkit.Timeout as exc:
            errors.append(f"timeout: {exc}")
        time.sleep(command.get("linger", 0))  # late results of reassigned tasks: duplicates
        print("done", json.dumps({"results": results, "errors": errors, "by": by,
                                  "stats": jobs.stats()}), flush=True)
"""

STATE_REPLICA = r"""
import json, sys, time
import zmqkit
from zmqkit.patterns import state

config = json.loads(sys.argv[1])
name, store = config.pop("name"), config.pop("store", None)

with zmqkit.Node(name, **config) as node, \
        state.State(node, "inventory", heartbeat=0.3, sync_timeout=1.0, store=store) as replica:
    replica.wait_synced(timeout=5)
    print("ready", json.dumps({"uuid": str(node.uuid), "host": node.host,
                               "keys": len(replica.items())}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "write":
            for index in range(command["count"]):
                replica.set(f"{command['prefix']}{index}", index)
                time.sleep(command["pause"])
            for key, value in command.get("also", {}).items():
                replica.set(key, value)
            print("wrote", command["count"], flush=True)
        elif command["op"] == "items":
            print("items", json.dumps(replica.items(), sort_keys=True), flush=True)
"""


class Child(NodeProcess):
    """A node process running one of the scripts above; speaks one JSON line per command."""

    def __init__(self, script: str, name: str, *, prefix: list[str], **config: Any) -> None:
        self.name, self.uuid, self.host = name, "", ""
        self._buffer, self._lines = b"", []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", script, json.dumps({"name": name, **config})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            cwd=REPO,
        )

    def command(self, command: dict[str, Any]) -> None:
        self.send(json.dumps(command))

    def answer(self, word: str, timeout: float) -> Any:
        return json.loads(self.expect(word, timeout))


class Hosts:
    """A lab (namespaces, links, children) with the helpers these tests need."""

    def __init__(self, lab: Lab, beacon_port: int) -> None:
        self.lab = lab
        self.port = beacon_port
        self.faults = 0

    def pair(self, left: str, right: str, subnet: int) -> tuple[str, str]:
        """Two namespaces joined by a veth pair on 198.18.<subnet>.0/24; interfaces zk-<role>."""
        a, b = self.lab.namespace(left), self.lab.namespace(right)
        self.lab.link((a, f"zk-{left}", f"198.18.{subnet}.1/24"),
                      (b, f"zk-{right}", f"198.18.{subnet}.2/24"))
        return a, b

    def child(self, script: str, ns: str, interface: str, name: str,
              timing: dict[str, float], **config: Any) -> Child:
        child = Child(script, name, prefix=["ip", "netns", "exec", ns], port=self.port,
                      scope="subnet", interface=interface, **timing, **config)
        self.lab.children.append(child)  # type: ignore[arg-type]  (reaped by lab.close)
        return child

    def link(self, ns: str, interface: str, state: str) -> None:
        ip("-n", ns, "link", "set", interface, state)
        self.faults += state == "down"

    def tc(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                              text=True, timeout=10)


@pytest.fixture
def hosts(beacon_port: int) -> Iterator[Hosts]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield Hosts(lab, beacon_port)
    finally:
        lab.close()
    left = {name for name in namespaces() if name.startswith(SESSION)}
    assert not left, f"namespaces left behind: {left}"


def figures(what: str, **counts: Any) -> None:
    print(f"figures: {what}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def call(caller: Child, method: str, args: list[Any], timeout: float) -> dict[str, Any]:
    caller.command({"op": "call", "method": method, "args": args, "timeout": timeout})
    result: dict[str, Any] = caller.answer("result", timeout + 10)
    return result


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)
    return value


def rpc_pair(hosts: Hosts, subnet: int, timing: dict[str, float] = PARTITION
             ) -> tuple[Child, Child, tuple[str, str]]:
    """A calc server in namespace "srv" and a caller in namespace "cli", joined by one link."""
    cli, srv = hosts.pair(f"cli{subnet}", f"srv{subnet}", subnet)
    server = hosts.child(RPC_SERVER, srv, f"zk-srv{subnet}", "calc", timing)
    caller = hosts.child(RPC_CALLER, cli, f"zk-cli{subnet}", "caller", timing, server="calc")
    server.wait_ready()
    caller.wait_ready(timeout=15)
    return server, caller, (cli, f"zk-cli{subnet}")


# -- RPC across a link that is cut, throttled or lossy ------------------------------------------


def test_partition_cut_link_mid_call_times_out_in_the_deadline_and_calls_work_again(
    hosts: Hosts,
) -> None:
    _, caller, (cli, interface) = rpc_pair(hosts, 20)
    assert call(caller, "add", [1, 2], 3)["result"] == 3

    # cut mid-call: the server's reply has no way back
    caller.command({"op": "call", "method": "sleep", "args": [1.0], "timeout": 2.0})
    time.sleep(0.3)
    hosts.link(cli, interface, "down")
    cut = caller.answer("result", 10)
    assert (cut["ok"], cut["error"]) == (False, "Timeout"), cut
    assert 2.0 <= cut["elapsed"] <= 2.0 + SLACK, cut

    # a call made while the link is down fails the same way, in its own deadline
    down = call(caller, "add", [1, 1], 1.0)
    assert (down["ok"], down["error"]) == (False, "Timeout"), down
    assert down["elapsed"] <= 1.0 + SLACK, down

    hosts.link(cli, interface, "up")
    back_at = time.monotonic()
    attempts = []
    while True:  # until the connection is back: every attempt ends in its deadline
        outcome = call(caller, "add", [20, 22], 1.5)
        attempts.append(outcome)
        assert outcome["elapsed"] <= 1.5 + SLACK, outcome
        if outcome["ok"]:
            assert outcome["result"] == 42
            break
        assert outcome["error"] == "Timeout", outcome
        assert time.monotonic() - back_at < 15, f"no call worked in 15 s: {attempts}"
    recovered = time.monotonic() - back_at
    assert call(caller, "sleep", [0.1], 2.0)["result"] == 0.1
    figures("rpc link cut", faults=hosts.faults, calls_failed_in_deadline=2 + len(attempts) - 1,
            recovered_after_s=round(recovered, 2))


def test_partition_throttled_link_still_completes_calls_only_slower(hosts: Hosts) -> None:
    _, caller, _ = rpc_pair(hosts, 21)
    size = 100_000
    fast = [call(caller, "blob", [size], 5), call(caller, "size", ["x" * size], 5)]
    assert [o["result"] for o in fast] == [size, size]
    # 1 Mbit/s each way: 100 kB takes about 0.8 s instead of a few milliseconds
    for ns, interface in ((hosts.lab.made[0], "zk-cli21"), (hosts.lab.made[1], "zk-srv21")):
        done = hosts.tc(ns, "qdisc", "add", "dev", interface, "root", "tbf", "rate", "1mbit",
                        "burst", "32kbit", "latency", "1s")
        assert done.returncode == 0, done.stderr
        hosts.faults += 1
    slow = [call(caller, "blob", [size], 10), call(caller, "size", ["x" * size], 10)]
    assert [o.get("result") for o in slow] == [size, size], slow
    assert all(o["elapsed"] > 0.4 for o in slow), slow
    assert all(o["elapsed"] > 5 * f["elapsed"] for o, f in zip(slow, fast, strict=True))
    many = [call(caller, "add", [n, 1], 3) for n in range(20)]  # small calls go on as before
    assert [o["result"] for o in many] == [n + 1 for n in range(20)]
    figures("rpc throttled link", faults=2, fast_ms=[int(o["elapsed"] * 1000) for o in fast],
            throttled_ms=[int(o["elapsed"] * 1000) for o in slow])


def test_partition_netem_loss_and_delay_still_complete_every_call(hosts: Hosts) -> None:
    _, caller, _ = rpc_pair(hosts, 22)
    srv_ns = hosts.lab.made[1]
    probe = hosts.tc(srv_ns, "qdisc", "add", "dev", "zk-srv22", "root", "netem", "delay", "10ms")
    if probe.returncode != 0:
        pytest.skip(f"this kernel has no netem ({probe.stderr.strip()})")
    hosts.tc(srv_ns, "qdisc", "del", "dev", "zk-srv22", "root")
    for ns, interface in ((hosts.lab.made[0], "zk-cli22"), (srv_ns, "zk-srv22")):
        done = hosts.tc(ns, "qdisc", "add", "dev", interface, "root", "netem", "delay", "20ms",
                        "loss", "5%")
        assert done.returncode == 0, done.stderr
    outcomes = [call(caller, "add", [n, n], 5) for n in range(30)]  # TCP retransmits the losses
    assert [o.get("result") for o in outcomes] == [2 * n for n in range(30)], outcomes
    assert min(o["elapsed"] for o in outcomes) >= 0.04  # the delay is there, both ways


def test_partition_sigkill_server_mid_work_hangs_no_call(hosts: Hosts) -> None:
    server, caller, _ = rpc_pair(hosts, 23)
    timeout = 3.0
    caller.command({"op": "gather", "method": "sleep", "timeout": timeout,
                    "calls": [[0.5 + 0.1 * n] for n in range(10)]})
    time.sleep(0.3)
    server.sigkill()
    hosts.faults += 1
    results = caller.answer("results", timeout + 10)
    assert len(results) == 10
    assert all(not r["ok"] and r["error"] in ("Timeout", "BrokenError") for r in results), results
    assert all(r["elapsed"] <= timeout + SLACK for r in results), results
    # a new server under the same name is found and called
    srv_ns = hosts.lab.made[1]
    hosts.child(RPC_SERVER, srv_ns, "zk-srv23", "calc", PARTITION).wait_ready()
    outcome = until(lambda: (o := call(caller, "add", [2, 2], 1.0))["ok"] and o, 15,
                    "a call to the restarted server")
    assert outcome["result"] == 4
    figures("rpc server SIGKILL", faults=1, calls_in_flight=10,
            failed_in_deadline=len(results),
            slowest_ms=int(max(r["elapsed"] for r in results) * 1000))


# -- the task farm: no task lost -------------------------------------------------------------------


def farm_hosts(hosts: Hosts, subnet: int) -> tuple[Child, Child, Child, tuple[str, str]]:
    """Submitter and worker "near" in one namespace; worker "far" in another, one link away."""
    home, away = hosts.pair(f"home{subnet}", f"away{subnet}", subnet)
    near = hosts.child(FARM_WORKER, home, f"zk-home{subnet}", "near", FAST, slots=2)
    far = hosts.child(FARM_WORKER, away, f"zk-away{subnet}", "far", FAST, slots=2)
    submitter = hosts.child(FARM_SUBMITTER, home, f"zk-home{subnet}", "boss", FAST, workers=2)
    for child in (near, far, submitter):
        child.wait_ready(timeout=15)
    assert submitter.expect("workers", 15) == "2"
    return submitter, near, far, (away, f"zk-away{subnet}")


def check_every_task_done(report: dict[str, Any], count: int) -> None:
    assert report["errors"] == [], report
    assert {int(n): v for n, v in report["results"].items()} == {n: 2 * n for n in range(count)}


def test_partition_sigkill_farm_worker_mid_work_loses_no_task(hosts: Hosts) -> None:
    submitter, _, far, _ = farm_hosts(hosts, 24)
    count = 60
    submitter.command({"count": count, "sleep": 0.05, "timeout": 20})
    submitter.expect("progress", 10)  # work is under way on both workers
    far.sigkill()
    hosts.faults += 1
    report = submitter.answer("done", 30)
    check_every_task_done(report, count)
    assert report["by"].get("near", 0) > 0 and report["stats"]["completed"] == count
    figures("farm worker SIGKILL", faults=1, tasks=count, lost=count - len(report["results"]),
            reassigned=report["stats"]["reassigned"], duplicates=report["stats"]["duplicates"],
            by=report["by"])


def test_partition_farm_worker_cut_off_mid_work_loses_no_task(hosts: Hosts) -> None:
    submitter, _, _, (away, interface) = farm_hosts(hosts, 25)
    count = 60
    submitter.command({"count": count, "sleep": 0.05, "timeout": 20, "linger": 1.5})
    submitter.expect("progress", 10)
    hosts.link(away, interface, "down")
    time.sleep(2.5)  # past the worker expiry: its tasks have gone to the near worker
    hosts.link(away, interface, "up")  # the far worker's late results now count as duplicates
    report = submitter.answer("done", 30)
    check_every_task_done(report, count)
    assert report["stats"]["completed"] == count
    figures("farm worker cut off", faults=1, tasks=count, lost=count - len(report["results"]),
            reassigned=report["stats"]["reassigned"], duplicates=report["stats"]["duplicates"],
            by=report["by"])


# -- replicated state: replicas converge -----------------------------------------------------------


def items(child: Child) -> dict[str, Any]:
    child.command({"op": "items"})
    value: dict[str, Any] = child.answer("items", 5)
    return value


def converged(*replicas: Child) -> dict[str, Any] | None:
    views = [items(replica) for replica in replicas]
    return views[0] if all(view == views[0] for view in views) and views[0] else None


def test_partition_sigkill_state_replica_mid_write_and_the_rest_converge(hosts: Hosts) -> None:
    west, east = hosts.pair("west26", "east26", 26)
    a = hosts.child(STATE_REPLICA, west, "zk-west26", "replica-a", FAST)
    a.wait_ready(timeout=15)
    b = hosts.child(STATE_REPLICA, east, "zk-east26", "replica-b", FAST)
    c = hosts.child(STATE_REPLICA, east, "zk-east26", "replica-c", FAST)
    b.wait_ready(timeout=15)
    c.wait_ready(timeout=15)
    a.command({"op": "write", "prefix": "a-", "count": 100, "pause": 0.005})
    c.command({"op": "write", "prefix": "c-", "count": 1000, "pause": 0.002})
    time.sleep(0.3)
    c.sigkill()  # mid-write: some of its writes reached someone, the rest never left
    hosts.faults += 1
    a.expect("wrote", 10)
    view = until(lambda: converged(a, b), 10, "replicas a and b agree")
    assert {f"a-{n}" for n in range(100)} <= view.keys()
    written_by_c = [key for key in view if key.startswith("c-")]
    assert written_by_c, "none of the killed replica's writes survived (it ran for 0.3 s)"
    late = hosts.child(STATE_REPLICA, west, "zk-west26", "replica-d", FAST)
    late.wait_ready(timeout=15)
    assert until(lambda: converged(a, b, late), 10, "a late joiner agrees") == view
    figures("state replica SIGKILL", faults=1, keys=len(view),
            from_killed_replica=len(written_by_c))


def test_partition_state_replicas_converge_after_a_partition_heals(hosts: Hosts) -> None:
    west, east = hosts.pair("west27", "east27", 27)
    a = hosts.child(STATE_REPLICA, west, "zk-west27", "replica-a", FAST)
    a.wait_ready(timeout=15)
    b = hosts.child(STATE_REPLICA, east, "zk-east27", "replica-b", FAST)
    b.wait_ready(timeout=15)
    a.command({"op": "write", "prefix": "before-", "count": 10, "pause": 0})
    a.expect("wrote", 10)
    until(lambda: converged(a, b), 10, "replicas agree before the partition")
    hosts.link(east, "zk-east27", "down")
    a.command({"op": "write", "prefix": "west-", "count": 50, "pause": 0.002,
               "also": {"contested": "west"}})
    b.command({"op": "write", "prefix": "east-", "count": 50, "pause": 0.002,
               "also": {"contested": "east"}})
    a.expect("wrote", 10)
    b.expect("wrote", 10)
    assert "east-0" not in items(a) and "west-0" not in items(b)  # really apart
    time.sleep(1.5)  # past the discovery expiry: each side sees the other gone
    hosts.link(east, "zk-east27", "up")
    view = until(lambda: converged(a, b), 15, "replicas agree after the partition heals")
    expected = {f"before-{n}" for n in range(10)}
    expected |= {f"{side}-{n}" for side in ("west", "east") for n in range(50)}
    assert expected | {"contested"} == view.keys()
    assert view["contested"] in ("west", "east")  # one winner, the same on both sides
    figures("state partition heal", faults=1, keys=len(view), contested_winner=view["contested"])
