"""Discovery at 1,000 and 10,000 nodes, simulated: no sockets, a simulated clock.

    python -m zmqkit.simulate [--nodes 1000 10000] [--observers 16] [--start-within 1] [--json]

Every node of one broadcast segment (the worst case: each beacon reaches every node) follows
the rules of ``zmqkit.beacon`` and ``zmqkit.contacts``: a HELLO at start; a periodic HELLO every
interval, the interval doubling past ``PEERS_PER_INTERVAL`` peers (``scaled_interval``) and said
in the ``interval`` header; an early broadcast for newcomers from about ``EARLY_ANSWERERS``
nodes (``answers_early``), within a bucket of ``EARLY_BURST`` per interval.

Who knows whom is counted, not stored: with no loss, node *i* knows node *j* once *j* has
broadcast since *i* started, so one counter per node (a Fenwick tree over start times) follows
every node's table exactly. A few **observers** also keep a real ``PeerTable``, fed the real
datagrams (decoded with the codec) at the simulated times: they check the count (each ends with
every peer, none expired: the interval header keeps stretched peers alive) and give the CPU cost
of a beacon. Unicast answers (to solicits and to newcomers from other segments) are left out:
they only add knowledge, so the time to converge is an upper bound.

Figures per run: time to a full mesh after the last start, the interval reached, datagrams
sent and received per node per second (steady, and the peak second), and the CPU per node that
the received beacons cost at the measured cost of one.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import time
import uuid as uuid_module
from dataclasses import asdict, dataclass

from .codec import BeaconKind, decode_beacon, encode_beacon
from .contacts import EARLY_ANSWERERS, EARLY_BURST, scaled_interval
from .peers import INTERVAL_HEADER, PeerTable

__all__ = ["Figures", "simulate"]

ANSWER_DELAY = 0.02  # the jitter of an early broadcast (zmqkit.beacon.ANSWER_DELAY)
EXPIRY_TICK = 0.25  # observers expire peers this often (zmqkit.beacon.EXPIRY_TICK)
START, ANNOUNCE, REARM, EXPIRE = range(4)


@dataclass(frozen=True)
class Figures:
    """What one simulated run gives."""

    nodes: int
    start_within_s: float
    full_mesh_after_last_start_s: float
    interval_reached_s: float
    sent_per_node_per_s: float
    received_per_node_per_s: float
    peak_received_per_node_per_s: float
    us_per_received_beacon: float
    cpu_per_node_percent: float
    observers: int
    observers_complete: bool
    expired: int
    simulated_s: float
    wall_s: float


class _Fenwick:
    """Range add, point query: node i's peer count is ``query(i)``."""

    def __init__(self, size: int) -> None:
        self.tree = [0] * (size + 1)

    def _add(self, index: int, value: int) -> None:
        index += 1
        while index < len(self.tree):
            self.tree[index] += value
            index += index & -index

    def add_range(self, lo: int, hi: int, value: int) -> None:
        """Add ``value`` to every position in [lo, hi)."""
        if lo < hi:
            self._add(lo, value)
            if hi < len(self.tree) - 1:
                self._add(hi, -value)

    def query(self, index: int) -> int:
        total, index = 0, index + 1
        while index > 0:
            total += self.tree[index]
            index -= index & -index
        return total


class _Run:
    def __init__(self, nodes: int, observers: int, start_within: float, base: float,
                 expiry: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n, self.base, self.expiry = nodes, base, expiry
        self.starts = sorted(self.rng.uniform(0, start_within) for _ in range(nodes))
        self.uuids = [uuid_module.UUID(int=self.rng.getrandbits(128)) for _ in range(nodes)]
        self.interval = [base] * nodes
        self.seq = [1] * nodes
        self.last = [-math.inf] * nodes  # each node's latest broadcast
        self.first_after_last_start = [math.inf] * nodes
        self.counts = _Fenwick(nodes)
        self.tokens = [float(EARLY_BURST)] * nodes
        self.updated = [0.0] * nodes
        self.armed: list[int] = []  # started nodes holding a token, by start rank
        self.next_announce = [math.inf] * nodes
        self.queue: list[tuple[float, int, int, int]] = []
        self.order = 0
        self.tables = {i: PeerTable(self.uuids[i], expiry)
                       for i in self.rng.sample(range(nodes), min(observers, nodes))}
        self.sent = 0
        self.received_by_second: dict[int, int] = {}
        self.decode_s = self.apply_s = 0.0
        self.decoded = self.applied = self.expired = 0

    def push(self, at: float, kind: int, node: int) -> None:
        self.order += 1
        heapq.heappush(self.queue, (at, self.order, kind, node))

    def known(self, node: int) -> int:
        """Peers that ``node`` knows (its own start HELLO counted itself once: taken off)."""
        return self.counts.query(node) - 1

    # -- what a node does --------------------------------------------------------------------

    def start(self, node: int, now: float) -> None:
        bisect.insort(self.armed, node)
        self.updated[node] = now
        self.announce(node, now)

    def announce(self, node: int, now: float) -> None:
        """Its HELLO (periodic, early or at start); the next one an interval later."""
        interval = scaled_interval(self.base, self.known(node), self.interval[node])
        if interval != self.interval[node]:
            self.interval[node] = interval
            self.seq[node] += 1
        self.broadcast(node, now)
        self.next_announce[node] = now + self.interval[node]
        self.push(self.next_announce[node], ANNOUNCE, node)

    def broadcast(self, sender: int, now: float) -> None:
        self.sent += 1
        hearers = bisect.bisect_right(self.starts, now) - 1
        second = int(now)
        self.received_by_second[second] = self.received_by_second.get(second, 0) + hearers
        # who hears from the sender for the first time: those started since its last broadcast
        lo = bisect.bisect_right(self.starts, self.last[sender])
        hi = bisect.bisect_right(self.starts, now)
        self.counts.add_range(lo, hi, 1)
        self.last[sender] = now
        if now >= self.starts[-1]:
            self.first_after_last_start[sender] = min(self.first_after_last_start[sender], now)
        self.answer_newcomer(sender, lo, hi, now)
        if self.tables:
            self.observe(sender, now)

    def answer_newcomer(self, sender: int, lo: int, hi: int, now: float) -> None:
        """The armed nodes in [lo, hi) that just learnt of ``sender`` answer early, each with
        the probability of ``answers_early``. Peer counts fall with the start rank, so the
        probability grows with it: draw from the top down, skipping geometrically under the
        current bound, and accept by the ratio (thinning)."""
        a, b = bisect.bisect_left(self.armed, lo), bisect.bisect_left(self.armed, hi)
        position = b
        while position > a:
            bound = self.probability(self.armed[position - 1])
            if bound <= 0:
                return
            skip = 1
            if bound < 1:
                skip += int(math.log(1 - self.rng.random()) / math.log(1 - bound))
            position -= skip
            if position < a:
                return
            node = self.armed[position]
            if node == sender or self.rng.random() * bound >= self.probability(node):
                continue
            self.fire(node, position, now)

    def probability(self, node: int) -> float:
        """The chance that ``node`` answers early: ``contacts.answers_early``'s rule."""
        return min(1.0, EARLY_ANSWERERS / max(1, self.known(node)))

    def fire(self, node: int, position: int, now: float) -> None:
        """An early broadcast within the jitter, and one token less."""
        rate = EARLY_BURST / self.interval[node]  # contacts.stretch
        self.tokens[node] = min(EARLY_BURST, self.tokens[node] + (now - self.updated[node]) * rate)
        self.updated[node] = now
        if self.tokens[node] < 1:
            return
        self.tokens[node] -= 1
        at = now + self.rng.uniform(0, ANSWER_DELAY)
        if at < self.next_announce[node]:
            self.next_announce[node] = at
            self.push(at, ANNOUNCE, node)
        if self.tokens[node] < 1:
            del self.armed[position]
            self.push(now + (1 - self.tokens[node]) / rate, REARM, node)

    # -- the observers' real tables ------------------------------------------------------------

    def observe(self, sender: int, now: float) -> None:
        headers = {} if self.interval[sender] == self.base else {
            INTERVAL_HEADER: str(round(self.interval[sender] * 1000))}
        datagram = encode_beacon(BeaconKind.HELLO, f"sim-{sender}", self.uuids[sender],
                                 self.seq[sender], {"rpc": "tcp://198.18.0.1:5555"}, headers)
        started = time.thread_time()  # CPU time: a busy machine does not inflate it
        decoded = decode_beacon(datagram)
        self.decode_s += time.thread_time() - started
        self.decoded += 1
        started = time.thread_time()
        for node, table in self.tables.items():
            if node != sender and self.starts[node] <= now:
                table.apply(decoded, "198.18.0.1", now, 47474)
                self.applied += 1
        self.apply_s += time.thread_time() - started

    # -- the clock ---------------------------------------------------------------------------------

    def run(self) -> tuple[float, float]:
        """Until a full mesh and two intervals of steady state after it; (mesh at, end)."""
        for node, at in enumerate(self.starts):
            self.push(at, START, node)
        self.push(EXPIRY_TICK, EXPIRE, -1)
        end = math.inf
        now = 0.0
        while self.queue:
            now, _, kind, node = heapq.heappop(self.queue)
            if now > end:
                break
            if kind == START:
                self.start(node, now)
            elif kind == ANNOUNCE:
                if now == self.next_announce[node]:  # not one an early broadcast replaced
                    self.announce(node, now)
            elif kind == REARM:
                bisect.insort(self.armed, node)
            else:
                for table in self.tables.values():
                    self.expired += len(table.expire(now))
                self.push(now + EXPIRY_TICK, EXPIRE, -1)
            if end == math.inf and max(self.first_after_last_start) < math.inf:
                end = now + 2 * max(self.interval) + 1
        return max(self.first_after_last_start), now


def simulate(nodes: int, *, observers: int = 16, start_within: float = 1.0, base: float = 1.0,
             expiry: float = 3.0, seed: int = 1) -> Figures:
    """Run ``nodes`` nodes that start within ``start_within`` seconds; see the module docstring."""
    wall = time.perf_counter()
    run = _Run(nodes, observers, start_within, base, expiry, seed)
    mesh_at, end = run.run()
    steady_from = int(mesh_at) + int(max(run.interval)) + 1
    steady = [run.received_by_second.get(s, 0) for s in range(steady_from, int(end))]
    received = sum(steady) / max(1, len(steady)) / nodes
    per_beacon = (run.decode_s / max(1, run.decoded) + run.apply_s / max(1, run.applied))
    return Figures(
        nodes=nodes,
        start_within_s=start_within,
        full_mesh_after_last_start_s=round(mesh_at - run.starts[-1], 3),
        interval_reached_s=max(run.interval),
        sent_per_node_per_s=round(1 / max(run.interval), 4),
        received_per_node_per_s=round(received, 1),
        peak_received_per_node_per_s=round(max(run.received_by_second.values()) / nodes, 1),
        us_per_received_beacon=round(per_beacon * 1e6, 2),
        cpu_per_node_percent=round(received * per_beacon * 100, 3),
        observers=len(run.tables),
        observers_complete=all(len(t) == nodes - 1 for t in run.tables.values()),
        expired=run.expired,
        simulated_s=round(end, 1),
        wall_s=round(time.perf_counter() - wall, 1),
    )


def main() -> None:
    """``python -m zmqkit.simulate``: one line of figures per size asked for."""
    parser = argparse.ArgumentParser(prog="python -m zmqkit.simulate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--observers", type=int, default=16)
    parser.add_argument("--start-within", type=float, default=1.0, metavar="S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args()
    for nodes in args.nodes:
        figures = simulate(nodes, observers=args.observers, start_within=args.start_within,
                           seed=args.seed)
        if args.json:
            print(json.dumps(asdict(figures)), flush=True)
        else:
            print("  ".join(f"{k}={v}" for k, v in asdict(figures).items()), flush=True)


if __name__ == "__main__":
    main()
