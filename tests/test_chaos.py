"""A Jepsen-style check of replicated state: random writes under cut links and killed processes.

N replicas, each a process in a network namespace of its own, joined through one bridge in a
hub namespace (addresses in 198.18.40.0/24; every namespace made here and deleted afterwards),
write random sets and deletes over a few keys into one group, each with a store (``store=``).
Meanwhile a nemesis cuts and heals links (``ip link set ... down``/``up`` on the hub's side of a
replica's cable) and SIGKILLs replicas, restarting each on its store a moment later. Every write
is logged by its replica as it is invoked (with the wall clock) and as ``set``/``delete``
returns (acknowledged), or fails.

When the time is up the writers stop, every link is healed and every killed replica restarted
(the last repair); from then on the replicas must converge to one map within
``CONVERGENCE_BOUND`` seconds, and the checker (``check``) must find no anomaly in it:

- **lost**: an acknowledged write missing although no write to its key could have superseded it
  (every candidate for the key's final value ended before the lost write began: its stamp is
  lower, so last-writer-wins would have kept the lost write);
- **phantom**: a final value that no write wrote.

Real time orders the writes because all namespaces share one clock and a write's stamp is that
clock read inside ``set``: a write invoked after another was acknowledged has the higher stamp.

The suite runs a short version (3 replicas, 12 s); ``make chaos`` runs a long one
(``ZMQKIT_CHAOS_REPLICAS``, ``ZMQKIT_CHAOS_SECONDS``; figures in docs/reliability.md). Figures
are printed as a ``figures:`` line (``pytest -rP``); ``ZMQKIT_CHAOS_REPORT=FILE`` also writes
them as JSON.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_netns import SESSION, Lab, ip, namespaces, skip_reason

REPO = Path(__file__).resolve().parent.parent
REPLICAS = int(os.environ.get("ZMQKIT_CHAOS_REPLICAS", "3"))
SECONDS = float(os.environ.get("ZMQKIT_CHAOS_SECONDS", "12"))
SEED = int(os.environ.get("ZMQKIT_CHAOS_SEED", str(random.randrange(1 << 30))))
KEYS = 12  # a few keys: writes to one key from several replicas clash often
RATE = 20.0  # writes per second per replica
CONVERGENCE_BOUND = 10.0  # seconds from the last repair (heal, restart) until every replica agrees
TIMING = {"interval": 0.2, "expiry": 1.0}  # discovery: a cut longer than 1 s is a departure
ABSENT = None  # a key's final value when it is deleted or was never written

CHAOS_REPLICA = r"""
import json, random, sys, threading, time
import zmqkit
from zmqkit.patterns import state

config = json.loads(sys.argv[1])
name, store, seed = config.pop("name"), config.pop("store"), config.pop("seed")
keys, rate = config.pop("keys"), config.pop("rate")
lock = threading.Lock()
stop = threading.Event()

def say(word, value):
    with lock:
        sys.stdout.write(f"{word} {json.dumps(value)}\n")
        sys.stdout.flush()

def write(replica):
    rand, n = random.Random(seed), 0
    while not stop.is_set():
        n += 1
        op, key = f"{name}.{n}", f"k{rand.randrange(keys)}"
        value = None if rand.random() < 0.2 else op  # one write in five deletes
        say("invoke", [op, key, value, time.time_ns()])
        try:
            if value is None:
                replica.delete(key)
            else:
                replica.set(key, value)
        except zmqkit.ZmqkitError as exc:
            say("fail", [op, f"{type(exc).__name__}: {exc}", time.time_ns()])
        else:
            say("ok", [op, time.time_ns()])
        stop.wait(rand.expovariate(rate))

with zmqkit.Node(name, **config) as node, \
        state.State(node, "jepsen", heartbeat=0.3, sync_timeout=1.0, join_wait=0.5,
                    give_up=3.0, store=store) as replica:
    replica.wait_synced(timeout=15)
    say("ready", {"uuid": str(node.uuid), "keys": len(replica.items())})
    writer = threading.Thread(target=write, args=(replica,), daemon=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            writer.start()
        elif command == "stop":
            stop.set()
            if writer.ident is not None:
                writer.join(15)
            say("stop", not writer.is_alive())
        elif command == "items":
            say("items", replica.items())
        elif command == "stats":
            say("stats", {**replica.stats(), "sync": str(replica.sync_status())})
"""


# -- the checker (pure) ----------------------------------------------------------------------------


@dataclass(slots=True)
class Op:
    """One write as its replica logged it: ``end`` is when it was acknowledged, or (not
    acknowledged) the latest time it may have taken effect."""

    op: str
    key: str
    value: str | None  # None: a delete
    invoked: int  # ns since the epoch
    end: int
    acknowledged: bool


def check(ops: Sequence[Op], final: dict[str, Any]) -> list[str]:
    """The anomalies of a final map against the writes: lost and phantom writes (see above)."""
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    anomalies = []
    for key in sorted(set(by_key) | set(final)):
        writes = by_key.get(key, [])
        value = final.get(key, ABSENT)
        candidates = [op for op in writes if op.value == value]
        if value is not ABSENT and not candidates:
            anomalies.append(f"phantom: {key}={value!r} was never written")
            continue
        if value is ABSENT and not candidates and not any(op.acknowledged for op in writes):
            continue  # never written, or only by writes that may not have happened
        latest_end = max((op.end for op in candidates), default=-1)
        for op in writes:
            if op.acknowledged and op.value != value and op.invoked > latest_end:
                what = "delete" if op.value is None else f"set {op.value!r}"
                anomalies.append(f"lost: {key} {what} (acknowledged) began after every write "
                                 f"that could have left {value!r}")
    return anomalies


def test_chaos_checker_finds_lost_and_phantom_writes() -> None:
    a1 = Op("a.1", "k", "a.1", invoked=10, end=20, acknowledged=True)
    b1 = Op("b.1", "k", "b.1", invoked=15, end=25, acknowledged=True)  # concurrent with a.1
    a2 = Op("a.2", "k", None, invoked=30, end=40, acknowledged=True)  # after both
    c1 = Op("c.1", "j", "c.1", invoked=50, end=99, acknowledged=False)  # killed mid-write
    assert check([a1, b1], {"k": "a.1"}) == [] and check([a1, b1], {"k": "b.1"}) == []
    assert check([a1, b1, a2], {}) == []
    assert check([a1, b1, a2], {"k": "b.1"}) == [
        "lost: k delete (acknowledged) began after every write that could have left 'b.1'"]
    assert len(check([a1, b1, a2], {"k": "x"})) == 1  # phantom
    assert check([c1], {}) == [] and check([c1], {"j": "c.1"}) == []
    late = Op("a.3", "k", "a.3", invoked=100, end=110, acknowledged=True)
    assert len(check([a1, a2, late], {"k": "a.1"})) == 2  # both later writes lost
    assert check([a1, a2, late], {}) == [
        "lost: k set 'a.3' (acknowledged) began after every write that could have left None"]


# -- the replicas, the lab, the nemesis ------------------------------------------------------------


class Replica:
    """One incarnation of a replica: a process in its namespace, its output read by a thread
    (history lines kept, answers queued), reaped by ``kill``."""

    def __init__(self, ns: str, index: int, incarnation: int, store: Path, port: int) -> None:
        self.index, self.incarnation = index, incarnation
        self.name = f"r{index}-{incarnation}"
        config = {"name": self.name, "store": str(store), "seed": SEED * 1000 + index * 100
                  + incarnation, "keys": KEYS, "rate": RATE, "port": port, "scope": "subnet",
                  "interface": f"zk-r{index}", **TIMING}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CHAOS_REPLICA, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        self.history: list[tuple[str, list[Any]]] = []
        self.answers: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.died_at: int | None = None  # ns since the epoch, once killed
        self._reader = threading.Thread(target=self._read, name=f"chaos-{self.name}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            word, _, rest = raw.decode().partition(" ")
            value = json.loads(rest)
            if word in ("invoke", "ok", "fail"):
                self.history.append((word, value))
            else:
                self.answers.put((word, value))

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def answer(self, word: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                got, value = self.answers.get(timeout=max(0.01, remaining))
            except queue.Empty:
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: no {word!r} in {timeout} s; "
                                         f"{self.stderr()}") from None
                continue
            if got == word:
                return value

    def ask(self, command: str, timeout: float = 10.0) -> Any:
        self.send(command)
        return self.answer(command, timeout)

    def sigkill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.died_at = time.time_ns()

    def kill(self) -> None:
        """Kill (if running), reap, join the reader, close the pipes; twice is fine."""
        if self.proc.poll() is None:
            self.sigkill()
        self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None or self.proc.stderr.closed:
            return "(running)"
        return self.proc.stderr.read().decode()[-2000:]

    def ops(self, now: int) -> list[Op]:
        """Its writes; one not acknowledged may have taken effect until it failed or the
        process died (``now`` if it did neither)."""
        invoked: dict[str, Op] = {}
        for word, value in self.history:
            if word == "invoke":
                op, key, written, at = value
                invoked[op] = Op(op, key, written, at, self.died_at or now, False)
            elif word == "ok":
                invoked[value[0]].end, invoked[value[0]].acknowledged = value[1], True
            else:
                invoked[value[0]].end = value[2]
        return list(invoked.values())


@dataclass
class Chaos:
    """The lab: a hub namespace with a bridge, and one namespace per replica."""

    lab: Lab
    port: int
    tmp: Path
    hub: str = ""
    spaces: list[str] = field(default_factory=list)
    live: dict[int, Replica] = field(default_factory=dict)
    every: list[Replica] = field(default_factory=list)
    cut: set[int] = field(default_factory=set)
    faults: Counter[str] = field(default_factory=Counter)

    def build(self, count: int) -> None:
        self.hub = self.lab.namespace("hub")
        ip("-n", self.hub, "link", "add", "zk-br", "type", "bridge")
        ip("-n", self.hub, "link", "set", "zk-br", "up")
        for index in range(count):
            ns = self.lab.namespace(f"r{index}")
            self.spaces.append(ns)
            ip("-n", ns, "link", "add", f"zk-r{index}", "type", "veth", "peer", "name",
               f"zk-p{index}", "netns", self.hub)
            ip("-n", ns, "addr", "add", f"198.18.40.{index + 1}/24", "brd", "+", "dev",
               f"zk-r{index}")
            ip("-n", ns, "link", "set", f"zk-r{index}", "up")
            ip("-n", self.hub, "link", "set", f"zk-p{index}", "master", "zk-br")
            ip("-n", self.hub, "link", "set", f"zk-p{index}", "up")

    def start(self, index: int) -> Replica:
        incarnation = sum(1 for r in self.every if r.index == index)
        replica = Replica(self.spaces[index], index, incarnation, self.tmp / f"r{index}.db",
                          self.port)
        self.every.append(replica)
        self.lab.children.append(replica)  # type: ignore[arg-type]  (reaped by lab.close)
        replica.answer("ready", 30)
        self.live[index] = replica
        return replica

    def link(self, index: int, up: bool) -> None:
        ip("-n", self.hub, "link", "set", f"zk-p{index}", "up" if up else "down")
        if up:
            self.cut.discard(index)
        else:
            self.cut.add(index)
        self.faults["heals" if up else "cuts"] += 1

    def kill(self, index: int) -> None:
        self.live.pop(index).sigkill()
        self.faults["kills"] += 1

    def nemesis(self, rand: random.Random, seconds: float) -> None:
        """Faults at random for ``seconds``: cut or heal a link, kill a replica or restart one."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(rand.uniform(0.3, 1.2))
            dead = [i for i in range(len(self.spaces)) if i not in self.live]
            choice = rand.random()
            if dead and (choice < 0.35 or len(dead) > len(self.spaces) // 2):
                self.start(rand.choice(dead)).send("start")
                self.faults["restarts"] += 1
            elif choice < 0.55 and self.live:
                self.kill(rand.choice(sorted(self.live)))
            elif self.cut and (choice < 0.8 or len(self.cut) == len(self.spaces)):
                self.link(rand.choice(sorted(self.cut)), up=True)
            else:
                self.link(rand.choice([i for i in range(len(self.spaces)) if i not in self.cut]),
                          up=False)

    def heal_links(self) -> None:
        for index in sorted(self.cut):
            self.link(index, up=True)

    def restart_all(self) -> None:
        for index in range(len(self.spaces)):
            if index not in self.live:
                self.start(index)
                self.faults["restarts"] += 1

    def views(self) -> list[dict[str, Any]]:
        return [replica.ask("items") for replica in self.live.values()]


@pytest.fixture
def chaos(beacon_port: int, tmp_path: Path) -> Iterator[Chaos]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield Chaos(lab, beacon_port, tmp_path)
    finally:
        lab.close()
    left = {name for name in namespaces() if name.startswith(SESSION)}
    assert not left, f"namespaces left behind: {left}"


@pytest.mark.netns
@pytest.mark.timeout(SECONDS + 180)
def test_chaos_replicas_converge_and_lose_no_acknowledged_write(chaos: Chaos) -> None:
    rand = random.Random(SEED)
    chaos.build(REPLICAS)
    for index in range(REPLICAS):
        chaos.start(index)
    for replica in chaos.live.values():
        replica.send("start")
    began = time.monotonic()
    chaos.nemesis(rand, SECONDS)
    for replica in chaos.live.values():  # the writes end; then the last heal and restarts
        assert replica.ask("stop", 20), f"{replica.name}: its writer did not stop"
    chaos.heal_links()
    healed = time.monotonic()
    chaos.restart_all()
    repaired = time.monotonic()  # every link up, every replica running: the clock starts
    while True:
        views = chaos.views()
        if all(view == views[0] for view in views):
            break
        assert time.monotonic() - repaired < CONVERGENCE_BOUND, (
            f"no agreement {CONVERGENCE_BOUND} s after the last repair (seed {SEED}): "
            f"{[r.ask('stats') for r in chaos.live.values()]}")
        time.sleep(0.1)
    agreed = time.monotonic()
    now = time.time_ns()
    ops = [op for replica in chaos.every for op in replica.ops(now)]
    anomalies = check(ops, views[0])
    figures = {
        "replicas": REPLICAS, "seconds": round(healed - began, 1), "seed": SEED,
        "ops": len(ops), "acknowledged": sum(op.acknowledged for op in ops),
        "indeterminate": sum(not op.acknowledged for op in ops),
        "deletes": sum(op.value is None for op in ops), "keys": len(views[0]),
        **{fault: chaos.faults[fault] for fault in ("cuts", "heals", "kills", "restarts")},
        "convergence_s": round(agreed - repaired, 2), "bound_s": CONVERGENCE_BOUND,
        "since_last_heal_s": round(agreed - healed, 2),
        "anomalies": len(anomalies)}
    print("figures: chaos: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    report = os.environ.get("ZMQKIT_CHAOS_REPORT")
    if report:
        Path(report).write_text(json.dumps({**figures, "anomaly_list": anomalies}, indent=2))
    assert anomalies == [], f"seed {SEED}: " + "\n".join(anomalies[:20])
    assert chaos.faults["kills"] + chaos.faults["cuts"] > 0, "the nemesis did nothing"
    assert figures["acknowledged"] > 10 * REPLICAS, figures
