"""Soak: RPC (sync, async, CURVE), pub/sub and the task farm under load, round after round.

A cluster of nodes (a long-running service: RPC server and caller, a CURVE pair, a publisher and
two subscribers, a farm's boss and two workers) serves while rounds run a fixed count of messages
through every pattern at once, from new clients, subscribers and submitters each round; every
answer is checked. A warm-up cluster runs and closes first (imports, caches, libzmq's threads);
then the test measures the process around the measured cluster and asserts that nothing grows
with the number of messages:

- Python objects (``sys.getallocatedblocks``) within ``BLOCKS_BOUND``, and resident memory
  (``VmRSS`` of /proc/self/status, after glibc's ``malloc_trim`` has handed back what its
  per-thread arenas cache) within ``RSS_BOUND``, from the end of the first measured round to the
  end of the last;
- open file descriptors (/proc/self/fd) exactly as before, OS threads (/proc/self/task) and
  Python threads no more than before;
- every call returned or failed within its deadline (here: every call returned, correct).

``make test`` runs a short soak (a few seconds). ``make soak`` sets ``ZMQKIT_SOAK_SCALE`` to run
many more messages per round and more rounds; the environment is read here, by the test, never
by the library. It also sets ``MALLOC_ARENA_MAX=2``: with glibc's default of eight arenas per
core, fragmentation across the arenas of a few dozen busy threads makes RSS creep up by about
a megabyte per long round even though no object is kept (tracemalloc stays flat, and with one
arena so does RSS), which would hide a real leak or fake one. The figures are written to the
test output (``pytest -rP``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from zmqkit.patterns import farm, pubsub, rpc

from zmqkit import Node, Timeout
from zmqkit.security import Keypair

SCALE = float(os.environ.get("ZMQKIT_SOAK_SCALE", "1"))  # make soak: a few hundred
ROUNDS = 3 if SCALE <= 1 else 3 + int(SCALE ** 0.5)
SYNC_CLIENTS, SYNC_CALLS = 4, int(250 * SCALE)  # per client per round
ASYNC_CALLS = int(2000 * SCALE)
SECURE_CALLS = int(200 * SCALE)
MESSAGES = int(5000 * SCALE)  # published per round, received by each of two subscribers
TASKS = int(300 * SCALE)
CALL_TIMEOUT = 5.0
SLACK = 0.5
RSS_BOUND = 16 * 1024 * 1024  # bytes the process may grow by over the measured rounds
BLOCKS_BOUND = 5_000  # Python memory blocks it may grow by (sys.getallocatedblocks)
FAST = {"interval": 0.2, "expiry": 1.0}
IN_FLIGHT = 2000  # the publisher stays this close to its slowest subscriber: no message lost


def _malloc_trim() -> Callable[[], object]:
    """glibc keeps freed memory in per-thread arenas: ``malloc_trim(0)`` hands it back, so RSS
    measures what the process holds, not what the allocator caches (no-op elsewhere)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


malloc_trim = _malloc_trim()


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Service:
    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, x: Any) -> Any:
        return x

    async def aadd(self, a: int, b: int) -> int:
        return a + b

    @rpc.blocking
    def blocking_add(self, a: int, b: int) -> int:
        return a + b


class Cluster:
    """The nodes of the soak, serving for as long as the cluster is open (a long-running service):
    an RPC server and its caller, a CURVE pair, a publisher and a node for two subscribers, a
    farm's boss and two workers."""

    def __init__(self, port: int, keys: dict[str, Keypair]) -> None:
        self.port = port
        self.keys = keys
        self._stack = contextlib.ExitStack()

    def node(self, name: str, **options: Any) -> Node:
        return self._stack.enter_context(Node(name, port=self.port, **FAST, **options))

    def __enter__(self) -> Cluster:
        server_keys, client_keys = self.keys["server"], self.keys["client"]
        try:
            rpc.serve(self.node("calc"), Service())
            rpc.serve(self.node("vault", keys=server_keys, keyring=[client_keys.public]), Service())
            self.caller = self.node("caller")
            self.secure = self.node("vault-caller", keys=client_keys, keyring=[server_keys.public])
            self.publisher = pubsub.Publisher(self.node("ticker"))
            self.screens = self.node("screens")
            self.boss = self.node("boss")
            for name in ("worker-1", "worker-2"):
                farm.serve_worker(self.node(name), lambda x: x * 2, farm="doubles", slots=2)
            self.caller.wait_for("calc", role="rpc")
            self.secure.wait_for("vault", role="rpc")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()


class Round:
    """One round of messages through every pattern at once, every answer checked."""

    def __init__(self, cluster: Cluster, scale: float = 1.0) -> None:
        self.cluster = cluster
        self.scale = scale
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    def timed(self, call: Callable[[], Any], expected: Any) -> None:
        start = time.monotonic()
        try:
            value = call()
        except Exception as exc:  # recorded and reported by the test
            value = exc
        elapsed = time.monotonic() - start
        with self._lock:
            self.latencies.append(elapsed)
            if value != expected or elapsed > CALL_TIMEOUT + SLACK:
                self.failures.append(f"{value!r} != {expected!r} after {elapsed:.2f} s")

    def run(self) -> None:
        cluster = self.cluster
        jobs = [threading.Thread(target=self.sync_calls, args=(cluster.caller, index),
                                 name=f"soak-sync-{index}") for index in range(SYNC_CLIENTS)]
        jobs.append(threading.Thread(target=self.async_calls, args=(cluster.caller,),
                                     name="soak-async"))
        jobs.append(threading.Thread(target=self.secure_calls, args=(cluster.secure,),
                                     name="soak-secure"))
        progress = [0, 0]
        connected = threading.Barrier(3)
        jobs += [threading.Thread(target=self.subscribe,
                                  args=(cluster.screens, index, progress, connected),
                                  name=f"soak-sub-{index}") for index in range(2)]
        for job in jobs:
            job.start()
        try:
            self.publish(cluster.publisher, progress, connected)
            self.farm(cluster.boss)
        finally:
            for job in jobs:
                job.join(60)
        assert not [job for job in jobs if job.is_alive()], "a soak job is stuck"

    def sync_calls(self, caller: Node, index: int) -> None:
        with rpc.Client(caller, "calc", timeout=CALL_TIMEOUT) as client:
            for n in range(self.n(SYNC_CALLS)):
                if n % 10 == 9:
                    self.timed(lambda n=n: client.blocking_add(n, index), n + index)
                elif n % 10 == 8:
                    payload = {"n": n, "blob": b"x" * 1000}
                    self.timed(lambda p=payload: client.echo(p), payload)
                else:
                    self.timed(lambda n=n: client.add(n, index), n + index)
        with self._lock:
            self.counts["sync-calls"] = self.counts.get("sync-calls", 0) + self.n(SYNC_CALLS)

    def async_calls(self, caller: Node) -> None:
        async def main() -> None:
            async with rpc.AsyncClient(caller, "calc", timeout=CALL_TIMEOUT) as client:
                total = self.n(ASYNC_CALLS)
                for start in range(0, total, 500):
                    began = time.monotonic()
                    batch = range(start, min(total, start + 500))
                    results = await asyncio.gather(*(client.aadd(n, 1) for n in batch),
                                                   return_exceptions=True)
                    elapsed = time.monotonic() - began
                    with self._lock:
                        self.latencies.append(elapsed)
                        if results != [n + 1 for n in batch] or elapsed > CALL_TIMEOUT + SLACK:
                            self.failures.append(f"async batch from {start}: {results[:3]}...")
                self.counts["async-calls"] = total

        asyncio.run(main())

    def secure_calls(self, secure: Node) -> None:
        with rpc.Client(secure, "vault", timeout=CALL_TIMEOUT) as client:
            for n in range(self.n(SECURE_CALLS)):
                self.timed(lambda n=n: client.add(n, n), 2 * n)
        self.counts["curve-calls"] = self.n(SECURE_CALLS)

    def subscribe(self, node: Node, index: int, progress: list[int],
                  connected: threading.Barrier) -> None:
        total = self.n(MESSAGES)
        with pubsub.Subscriber(node, "stream", "warm") as subscriber:
            subscriber.wait_for_publishers(timeout=5)
            while True:  # past the slow joiner: the publisher sends "warm" until we hear one
                message = subscriber.recv(5.0)
                if message.topic == "warm":
                    break
            connected.wait(10)
            seqs = []
            try:
                while len(seqs) < total:
                    message = subscriber.recv(5.0)
                    if message.topic == "stream":
                        seqs.append(message.seq)
                        progress[index] = len(seqs)
            except Timeout:
                pass
        with self._lock:
            if not seqs or seqs != list(range(seqs[0], seqs[0] + total)):  # all, in order
                self.failures.append(f"subscriber {index}: {len(seqs)} of {total} in order")
            self.counts[f"messages-{index}"] = len(seqs)

    def publish(self, publisher: pubsub.Publisher, progress: list[int],
                connected: threading.Barrier) -> None:
        deadline = time.monotonic() + 10
        while connected.n_waiting < 2:  # both subscribers have heard a warm-up message
            publisher.publish("warm", "warm")
            time.sleep(0.01)
            assert time.monotonic() < deadline, "subscribers never connected"
        connected.wait(10)
        for n in range(1, self.n(MESSAGES) + 1):
            while n - min(progress) > IN_FLIGHT:
                time.sleep(0.0005)
                assert time.monotonic() < deadline + 60, "subscribers stopped reading"
            publisher.publish("stream", {"seq": n, "sym": "ABC", "px": 101.25, "qty": 100})

    def farm(self, boss: Node) -> None:
        with farm.Submitter(boss, "doubles") as doubles:
            total = self.n(TASKS)
            ids = {doubles.submit(n): n for n in range(total)}
            results = {ids[r.task_id]: r.value for r in doubles.as_completed(timeout=60)}
            if results != {n: 2 * n for n in range(total)}:
                self.failures.append(f"farm: {len(results)} of {total} tasks right")
            self.counts["tasks"] = len(results)


def settle(measure: Callable[[], int], target: int, timeout: float = 3.0) -> int:
    """libzmq closes descriptors and ends its threads a moment after a socket or context closes."""
    deadline = time.monotonic() + timeout
    while (value := measure()) != target and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def stable(measure: Callable[[], int]) -> int:
    """A count that has stopped moving (libzmq closes descriptors a moment after a close)."""
    last, same = measure(), 0
    for _ in range(60):
        time.sleep(0.05)
        value = measure()
        same = same + 1 if value == last else 0
        if same >= 4:
            return value
        last = value
    return last


@pytest.mark.slow
def test_soak_rpc_pubsub_farm_memory_fds_and_threads_stay_flat(beacon_port: int) -> None:
    keys = {"server": Keypair.generate(), "client": Keypair.generate()}
    with Cluster(beacon_port, keys) as cluster:  # warm-up: imports, caches, libzmq's own threads
        Round(cluster, scale=0.2).run()
    gc.collect()
    before = {"fds": stable(open_fds), "threads": stable(os_threads),
              "py-threads": threading.active_count()}
    started = time.monotonic()
    totals: dict[str, int] = {}
    slowest = 0.0  # (one number, not a list: the test must not grow with the messages either)
    rss_after_round, blocks_after_round = [], []
    untrimmed = 0  # the most RSS seen before handing cached memory back
    with Cluster(beacon_port, keys) as cluster:
        for _ in range(ROUNDS):
            soak = Round(cluster)
            soak.run()
            assert not soak.failures, soak.failures[:10]
            slowest = max(slowest, *soak.latencies)
            for key, value in soak.counts.items():
                totals[key] = totals.get(key, 0) + value
            gc.collect()
            blocks_after_round.append(sys.getallocatedblocks())
            untrimmed = max(untrimmed, rss())
            malloc_trim()
            rss_after_round.append(rss())
    elapsed = time.monotonic() - started
    fds = settle(open_fds, before["fds"])
    threads = settle(os_threads, before["threads"])
    # memory is compared from the end of the first round, once every queue and cache is in use
    growth = rss_after_round[-1] - rss_after_round[0]
    blocks_growth = blocks_after_round[-1] - blocks_after_round[0]
    print(f"figures: soak: scale={SCALE:g}, rounds={ROUNDS}, seconds={elapsed:.1f}, "
          + ", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
          + f", slowest_call_ms={int(slowest * 1000)}"
          + f", python_blocks_growth={blocks_growth}"
          + f", rss_growth_kib={growth // 1024}, rss_untrimmed_peak_mib={untrimmed / 2**20:.1f}"
          + ", rss_per_round_mib=" + str([round(r / 2**20, 1) for r in rss_after_round])
          + f", fds={before['fds']}->{fds}, os_threads={before['threads']}->{threads}")
    assert totals["sync-calls"] == ROUNDS * SYNC_CLIENTS * SYNC_CALLS
    assert totals["messages-0"] == totals["messages-1"] == ROUNDS * MESSAGES
    assert totals["tasks"] == ROUNDS * TASKS
    assert slowest <= CALL_TIMEOUT + SLACK
    assert fds == before["fds"], f"file descriptors leaked: {before['fds']} -> {fds}"
    assert threads <= before["threads"], f"OS threads leaked: {before['threads']} -> {threads}"
    assert threading.active_count() <= before["py-threads"]
    assert blocks_growth < BLOCKS_BOUND, f"{blocks_growth} more Python memory blocks held"
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB over {ROUNDS} rounds"
