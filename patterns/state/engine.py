"""The replica's service thread: it alone makes, uses and closes the replica's sockets.

    PUB     (bound, ``state-pub:G``)  publishes this replica's writes and its digest
    ROUTER  (bound, ``state:G``)      answers sync requests with snapshots
    SUB     (connected to every member's PUB)  takes the group's writes and digests
    DEALER  (one member at a time)    asks for a sync when the planner says so

Every socket comes from the node, so a node with keys serves and connects over CURVE only. The
engine talks to the callers' side only through ``Replica``. A durable replica's store belongs to
the engine too: opened in its thread (what it held taken back before the thread is ready),
written each turn before the writes it holds are published, and closed when the thread ends.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid as uuid_module
from pathlib import Path

from zmqkit import (
    Node,
    Peer,
    Poller,
    ProtocolError,
    SecurityError,
    ServiceThread,
    Socket,
    SocketKind,
    codec,
)

from . import wire
from .replica import Replica
from .store import Store

__all__ = ["TICK", "Engine"]

log = logging.getLogger("zmqkit.state")

TICK = 0.5  # the longest the engine sleeps without looking at the clock
MAX_UPDATES_PER_TURN = 1000  # frames taken from the SUB before the other sockets get a turn
MAX_REQUESTS_PER_TURN = 100


class Engine:
    """Runs one replica of ``group`` on ``node`` in a ``ServiceThread`` (``run``).

    ``endpoint`` (the sync ROUTER) and ``pub_endpoint`` are set once the thread is ready.
    """

    # made by run, in the service thread
    _pub: Socket
    _router: Socket
    _sub: Socket
    _poller: Poller

    def __init__(self, node: Node, replica: Replica, group: str, writer: uuid_module.UUID,
                 heartbeat: float, store: Path | None = None) -> None:
        self.node = node
        self.store_path = store
        self._store: Store | None = None
        self.replica = replica
        self.group = group
        self.writer = writer.bytes
        self.heartbeat = heartbeat
        self.endpoint = ""
        self.pub_endpoint = ""
        self._role, self._pub_role = wire.sync_role(group), wire.pub_role(group)
        self._pub_seq = 0
        self._connected: dict[uuid_module.UUID, str] = {}
        self._member_peers: dict[uuid_module.UUID, Peer] = {}
        self._refused: set[uuid_module.UUID] = set()  # members whose keys we may not talk to
        self._peers_version = -1
        self._next_digest = 0.0
        self._dealer: Socket | None = None
        self._call_id = 0
        self._call_ids = itertools.count(1)

    # -- the thread --------------------------------------------------------------------------------

    def run(self, service: ServiceThread) -> None:
        """The service thread's body: open the store, make the sockets, serve until stopped,
        close them."""
        failure: BaseException | None = None
        try:
            self._store = self._open_store()
            self._run_sockets(service)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if self._store is not None:
                self._store.close()
            self.replica.engine_stopped(failure)

    def _open_store(self) -> Store | None:
        """The store, with what it held taken back into the replica (None: not durable)."""
        if self.store_path is None:
            return None
        store = Store(self.store_path, self.group)
        try:
            self.replica.restore(*store.load(time.time_ns()))
        except BaseException:
            store.close()
            raise
        return store

    def _run_sockets(self, service: ServiceThread) -> None:
        made: list[Socket] = []
        try:
            self._pub = self.node.server_socket(SocketKind.PUB)
            made.append(self._pub)
            self._router = self.node.server_socket(SocketKind.ROUTER)
            made.append(self._router)
            self._sub = self.node.client_socket(SocketKind.SUB)
            made.append(self._sub)
            for prefix in codec.publish_prefixes(wire.topic(self.group)):
                self._sub.subscribe(prefix)
            self._poller = Poller([self._sub, self._router, service.wakeup])
            self.pub_endpoint, self.endpoint = self._pub.endpoint, self._router.endpoint
            service.ready()
            try:
                self._serve(service)
            finally:
                self.persist()  # writes made just before the close are stored...
                self._flush()  # ... and still go out (PUB lingers)
        finally:
            self._drop_dealer()
            for sock in made:
                sock.close()

    def _serve(self, service: ServiceThread) -> None:
        replica = self.replica
        replica.begin(time.monotonic())
        while not service.stopping:
            now = time.monotonic()
            self._refresh_members()
            self.persist()
            self._flush()
            self._tick(now, time.time_ns())
            replica.dispatch()
            ready = self._poller.poll(self._next_wait(now))
            if self._sub in ready:
                self._take_updates()
            if self._router in ready:
                self._answer_requests()
            if self._dealer is not None and self._dealer in ready:
                self._take_sync_reply()

    def _next_wait(self, now: float) -> float:
        wait = self.replica.next_wake(now, time.time_ns())
        return min(TICK, max(0.0, self._next_digest - now), wait)

    # -- membership --------------------------------------------------------------------------------

    def _refresh_members(self) -> None:
        """Keep the SUB connected to every member's PUB, and tell the planner who is there."""
        node = self.node
        if node.peers_version == self._peers_version:
            return
        self._peers_version = node.peers_version
        self._member_peers = {peer.uuid: peer for peer in node.peers(role=self._role)
                              if self._pub_role in peer.endpoints}
        wanted = {uuid: peer.endpoints[self._pub_role]
                  for uuid, peer in self._member_peers.items()}
        self._refused &= wanted.keys()  # members gone are forgotten: bounded by the group
        for member, endpoint in list(self._connected.items()):
            if wanted.get(member) != endpoint:
                self._sub.disconnect(endpoint)
                del self._connected[member]
        for member in wanted:
            if member not in self._connected and member not in self._refused:
                try:
                    endpoint = self._sub.connect_peer(self._member_peers[member], self._pub_role)
                except SecurityError as exc:  # not a member we may talk to: skipped, counted
                    self._refused.add(member)
                    self.replica.count("refused-members")
                    log.warning("state %s: not syncing with %s", self.group, exc)
                    continue
                self._connected[member] = endpoint
        members = {uuid: peer.endpoints[self._role] for uuid, peer in self._member_peers.items()
                   if uuid not in self._refused}
        if self.replica.set_members(members) is not None:
            self._drop_dealer()

    # -- storing -----------------------------------------------------------------------------------

    def persist(self) -> None:
        """Write what changed since the last turn to the store, in one transaction (in the
        engine's thread only: a change callback's durable write comes here too).

        Raises:
            BrokenError: the store failed; the engine stops (and so does every durable write).
        """
        if self._store is None:
            return
        taken = self.replica.take_changes()
        if taken is None:
            return
        changes, seq = taken
        self._store.write(changes)
        self.replica.stored(seq)
        self.replica.count("store-writes")

    # -- publishing --------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Publish the writes made since the last flush, in as few messages as fit."""
        ops, sizes, last_seq = self.replica.take_outbox()
        if not ops:
            return
        self.replica.count("published", len(ops))  # first: a reader of stats may see the effect
        first = last_seq - len(ops) + 1
        for start, end in wire.batches(sizes):
            self._pub_seq += 1
            self._pub.send(wire.encode_updates(self.group, self.writer, self._pub_seq,
                                               first + end - 1, ops[start:end]))

    def _publish_digest(self) -> None:
        digest = self.replica.digest()
        if digest:
            self._pub_seq += 1
            self._pub.send(wire.encode_digest(self.group, self.writer, self._pub_seq,
                                              self.node.uuid, digest))

    # -- timers ------------------------------------------------------------------------------------

    def _tick(self, now: float, wall: int) -> None:
        if now >= self._next_digest:
            self._next_digest = now + self.heartbeat
            self._publish_digest()
        plan, known = self.replica.tick(now, wall)
        if plan.timed_out is not None:
            self.replica.count("sync-timeouts")
            self._drop_dealer()
        if plan.ask is not None:
            self._ask(plan.ask, known)

    # -- syncing -----------------------------------------------------------------------------------

    def _ask(self, member: uuid_module.UUID, known: dict[bytes, int]) -> None:
        self._drop_dealer()
        self._dealer = self.node.client_socket(SocketKind.DEALER)
        self._dealer.connect_peer(self._member_peers[member], self._role)  # its key was checked
        self._poller.register(self._dealer)
        self._call_id = next(self._call_ids)
        # queued until connected; the planner's deadline bounds the wait for the answer
        self._dealer.send(wire.encode_sync_request(self._call_id, self.group, known))
        self.replica.count("syncs")

    def _drop_dealer(self) -> None:
        if self._dealer is not None:
            self._poller.unregister(self._dealer)
            self._dealer.close()
            self._dealer = None

    def _take_sync_reply(self) -> None:
        assert self._dealer is not None
        frame = self._dealer.try_recv()
        if frame is None:
            return
        try:
            reply = wire.read_sync_reply(frame, self._call_id)
        except ProtocolError:
            self.replica.count("dropped-bad-reply")
            return
        self.replica.merge(reply.snapshot, reply.error, time.monotonic(), time.time_ns())
        self._drop_dealer()

    # -- receiving ---------------------------------------------------------------------------------

    def _take_updates(self) -> None:
        for _ in range(MAX_UPDATES_PER_TURN):
            frame = self._sub.try_recv()
            if frame is None:
                return
            try:
                message = wire.read_publication(frame)
            except ProtocolError:
                self.replica.count("dropped-malformed")
                continue
            if isinstance(message, wire.Updates):
                self.replica.receive(message.writer, message.last_seq, message.ops,
                                     time.time_ns())
            else:
                self.replica.digest_from(message.member, message.applied, time.monotonic())

    # -- serving sync requests ---------------------------------------------------------------------

    def _answer_requests(self) -> None:
        for _ in range(MAX_REQUESTS_PER_TURN):
            frames = self._router.try_recv_multipart()
            if frames is None:
                return
            split = wire.split_request(frames)
            if split is None:
                self.replica.count("bad-requests")
                self._router.send_multipart([*frames[:1], wire.MULTIPART_ERROR])
                continue
            address, body = split
            request = wire.read_sync_request(body, self.group)
            if isinstance(request, wire.Refusal):
                if request.bad:
                    self.replica.count("bad-requests")
                answer = request.answer
            else:
                answer = wire.encode_snapshot(request.call_id, self.replica.snapshot(request.known))
                self.replica.count("served")
            if answer is not None:
                self._router.send_multipart([*address, answer])
