"""The loop of the groups thread: it alone touches the sockets and the core.

    XPUB    (bound, role ``groups-pub``)  this node's shouts; it reads the peers' join marks
    SUB     (connected to every peer's ``groups-pub``)  the shouts of the groups it is in
    ROUTER  (bound, role ``groups``)  whispers to this node, acknowledged
    DEALER  (one per peer whispered to)  whispers from this node, and their acknowledgements

The engine is made in the groups thread and lives there. It meets the part that runs it only
through ``Host``: work handed over by other threads (commands, shouts, presence events) comes in,
events and the ``groups`` header go out. What other threads may read (``joined``, ``view``,
``endpoint``...) it publishes as attributes that it replaces whole, never changes in place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from zmqkit import (
    BrokenError,
    BusyError,
    ClosedError,
    ConfigError,
    Deadline,
    EncodeError,
    Node,
    Peer,
    PeerEvent,
    PeerNotFound,
    Poller,
    SecurityError,
    ServiceThread,
    Socket,
    SocketKind,
    Timeout,
)

from . import wire
from .core import GroupEvent, GroupsCore, Member

__all__ = ["ACK_GRACE", "BATCH_BYTES", "BATCH_COUNT", "TICK", "Command", "Engine", "Host",
           "settle"]

log = logging.getLogger("zmqkit.groups")

BATCH_BYTES = 65_536  # shouts queued together leave as one PUBLISH_BATCH of at most this
BATCH_COUNT = 1024  # ... or this many
READ_BATCH = 1000  # frames taken from one socket before looking at the others
TICK = 0.5  # the longest the groups thread sleeps without looking at the clock
# How long the acknowledgements a peer sent before it went may still come. Discovery and the
# whisper sockets are separate paths with no order between them: a peer's goodbye (a UDP beacon)
# often arrives before the acks it had queued (TCP, and a close that lingers 0.2 s).
ACK_GRACE = 1.0

Whisper = concurrent.futures.Future[None]
Command = Callable[["Engine"], None]  # work another thread hands to the groups thread
# a whisper waiting for its peer to be discovered: (peer, body, deadline, future)
_Parked = tuple[uuid_module.UUID, Any, Deadline, Whisper]


class Host(Protocol):
    """What the engine needs from the part that runs it; every method is called in the groups
    thread."""

    def take_commands(self) -> list[Command]:
        """The commands handed over since the last call, oldest first."""

    def take_shouts(self) -> list[tuple[str, int, bytes]]:
        """The shouts queued since the last call: (topic, seq, encoded [name, body]) each."""

    def take_presence(self) -> list[PeerEvent]:
        """The presence events from discovery since the last call."""

    def announce(self, joined: frozenset[str]) -> None:
        """Put ``joined`` in the node's ``groups`` header.

        Raises:
            ClosedError: the part is closing (its header is withdrawn).
            EncodeError: the beacon has no room for it.
        """

    def deliver(self, events: list[GroupEvent]) -> None:
        """Hand ``events`` to the readers and callbacks."""

    def stop_accepting(self) -> list[Command]:
        """Refuse new work from now on; return the commands still queued."""


def settle(future: Whisper, outcome: BaseException | None) -> None:
    """Settle a whisper's future once (a second settle, after a race with close or a caller
    that gave up, is ignored)."""
    if future.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if outcome is None:
            future.set_result(None)
        else:
            future.set_exception(outcome)


class Engine:
    """The groups thread's sockets and core. Made in that thread, which alone uses it.

    Raises (when made):
        ClosedError: the node is not running.
        ConfigError: the sockets could not be bound.
    """

    def __init__(self, node: Node, service: ServiceThread, host: Host) -> None:
        self.node = node
        self.service = service
        self.host = host
        self.core: GroupsCore[Whisper] = GroupsCore(node.uuid)
        self.closing = False
        made: list[Socket] = []
        try:
            self.pub = node.server_socket(SocketKind.XPUB)
            made.append(self.pub)
            self.router = node.server_socket(SocketKind.ROUTER)
            made.append(self.router)
            self.sub = node.client_socket(SocketKind.SUB)
        except BaseException:
            for sock in made:
                sock.close()
            raise
        # read by other threads: replaced whole, never changed in place
        self.endpoint = self.router.endpoint
        self.pub_endpoint = self.pub.endpoint
        self.joined: frozenset[str] = frozenset()
        self.view: Mapping[str, list[Member]] = {}
        # the groups thread's own
        self.dealers: dict[uuid_module.UUID, Socket] = {}
        self.dealer_peer: dict[Socket, uuid_module.UUID] = {}
        self.draining: dict[Socket, float] = {}  # DEALERs of peers gone: closed at this time
        self.connected: dict[uuid_module.UUID, str] = {}
        self.refused: dict[uuid_module.UUID, SecurityError] = {}  # peers whose keys we refuse
        self.parked: list[_Parked] = []
        self.poller = Poller([self.sub, self.router, self.pub, service.wakeup])

    # -- the loop --------------------------------------------------------------------------------

    def take_presence_snapshot(self) -> None:
        """The peers discovered before the thread started (the events queued since are read
        next; the core ignores what is older than what it knows)."""
        events: list[GroupEvent] = []
        now = time.monotonic()
        for peer in self.node.peers(role=wire.ROLE):
            events += self.core.update(peer, now)
        self.refresh_connections()
        self.deliver_membership(events)

    def run(self) -> None:
        """Serve until the service is told to stop."""
        while not self.service.stopping:
            self.run_commands()
            self.take_presence()
            self.flush()
            now = time.monotonic()
            self.settle_expired(now)
            self.deliver_membership(self.core.due(now))
            for ready in self.poller.poll(self.next_wait()):
                if ready is self.sub:
                    self.take_shouts()
                elif ready is self.router:
                    self.serve()
                elif ready is self.pub:
                    self.take_marks()
                elif isinstance(ready, Socket) and ready in self.dealer_peer:
                    self.take_acks(ready)

    def close(self) -> None:
        """Fail what waits (``ClosedError``), send the shouts queued last, close the sockets."""
        self.closing = True
        for command in self.host.stop_accepting():  # each fails with ClosedError: none hangs
            command(self)
        for _, _, _, future in self.parked:
            settle(future, ClosedError("groups closed before the peer was found"))
        for waiter, _ in self.core.abandoned():
            settle(waiter, ClosedError("groups closed before the whisper was acknowledged"))
        try:
            self.flush()  # shouts made just before the close still go out (PUB lingers 0.2 s)
        finally:
            for sock in [*self.dealers.values(), *self.draining, self.pub, self.sub, self.router]:
                sock.close()

    def stats(self) -> dict[str, int]:
        """The core's counters, copied in one step (any thread: the groups thread may be
        counting; copying a dict holds the interpreter lock throughout)."""
        return dict(self.core.stats)

    def next_wait(self) -> float:
        """How long the poll may sleep: until the next whisper deadline, at most ``TICK``."""
        deadlines = [d.at for _, _, d, _ in self.parked] + list(self.draining.values())
        deadlines += [at for at in (self.core.next_deadline(), self.core.next_join())
                      if at is not None]
        if not deadlines:
            return TICK
        return min(TICK, max(0.0, min(deadlines) - time.monotonic()) + 0.001)

    def run_commands(self) -> None:
        """Run the work other threads handed over, in the order it came."""
        for command in self.host.take_commands():
            command(self)

    def deliver_membership(self, events: list[GroupEvent]) -> None:
        """Show the membership these events leave, then hand them on (so that a reader of an
        event finds ``members`` up to date)."""
        if events:
            self.view = self.core.groups()
            self.host.deliver(events)

    # -- membership ------------------------------------------------------------------------------

    def change(self, group: str, join: bool) -> None:
        """Join or leave ``group``.

        Joining subscribes (the group's topic, then the mark that tells each peer it has
        arrived), then announces; leaving announces, then unsubscribes, and drops the group's
        shouts still on their way.

        Raises:
            ClosedError: closing.
            EncodeError: the beacon has no room for another group; nothing changed.
        """
        if self.closing:
            raise ClosedError("groups closed before the membership changed")
        if join == (group in self.joined):
            return
        if join:
            self.subscribe(group, True)
            joined = self.joined | {group}
            try:
                self.host.announce(joined)
            except BaseException:
                self.subscribe(group, False)
                raise
            self.joined = joined
        else:
            self.joined = self.joined - {group}
            try:
                self.host.announce(self.joined)
            finally:
                self.subscribe(group, False)

    def subscribe(self, group: str, on: bool) -> None:
        """(Un)subscribe to the group's shouts, and (un)set the mark that follows them."""
        for prefix in (*wire.subscription(group), wire.join_mark(self.node.uuid, group)):
            if on:
                self.sub.subscribe(prefix)
            else:
                self.sub.unsubscribe(prefix)

    def take_marks(self) -> None:
        """Read the subscriptions the peers' SUBs sent to the XPUB: their marks release JOINs."""
        events: list[GroupEvent] = []
        for _ in range(READ_BATCH):
            message = self.pub.try_recv()
            if message is None:
                break
            mark = wire.read_join_mark(message)
            if mark is not None:
                events += self.core.mark(*mark)
        self.deliver_membership(events)

    def take_presence(self) -> None:
        """Read the presence events queued by discovery: membership, connections, and the
        whispers parked until their peer showed up."""
        presence = self.host.take_presence()
        if not presence:
            return
        events: list[GroupEvent] = []
        now = time.monotonic()
        for event in presence:
            events += self.core.presence(event, now)
        self.refresh_connections()
        self.deliver_membership(events)
        parked, self.parked = self.parked, []
        for whisper in parked:  # the peers they wait for may be here now
            self.send_whisper(*whisper)

    def refresh_connections(self) -> None:
        """Connect to the shouts of every peer in groups; drop what belonged to peers gone."""
        wanted = {u: p.pub_endpoint for u, p in self.core.peers.items() if p.pub_endpoint}
        for peer_uuid, endpoint in list(self.connected.items()):
            if wanted.get(peer_uuid) != endpoint:
                self.sub.disconnect(endpoint)
                del self.connected[peer_uuid]
        new = [u for u in wanted if u not in self.connected and u not in self.refused]
        peers = {peer.uuid: peer for peer in self.node.peers(role=wire.ROLE)} if new else {}
        for peer_uuid in new:
            peer = peers.get(peer_uuid)
            if peer is None or peer.endpoints.get(wire.PUB_ROLE) != wanted[peer_uuid]:
                continue  # changed or gone again since the event: the next refresh sees to it
            if self.connect(self.sub, peer, wire.PUB_ROLE):
                self.connected[peer_uuid] = wanted[peer_uuid]
        for peer_uuid in [u for u in self.dealers if u not in self.core.peers]:
            self.retire_dealer(peer_uuid)
        for peer_uuid in [u for u in self.refused if u not in self.core.peers]:
            del self.refused[peer_uuid]  # gone: the table stays as small as the mesh

    def connect(self, sock: Socket, peer: Peer, role: str) -> bool:
        """Connect ``sock`` to ``peer``'s ``role`` under the node's keys; False (counted, warned
        once per peer) when this node may not talk to it."""
        if peer.uuid in self.refused:
            return False
        try:
            sock.connect_peer(peer, role)
        except SecurityError as exc:
            self.refused[peer.uuid] = exc
            self.core.stats["refused-peers"] += 1
            log.warning("groups: not talking to %s", exc)
            return False
        except ConfigError:  # it stopped serving the role since: as good as gone
            return False
        return True

    # -- shouts ----------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send the shouts queued since the last look: those of one group that queued together
        leave as one PUBLISH_BATCH (consecutive sequence numbers): how a busy sender keeps up."""
        queued = self.host.take_shouts()
        start = 0
        while start < len(queued):
            batches: dict[str, tuple[int, list[bytes]]] = {}
            size = 0
            end = start
            while end < len(queued) and end - start < BATCH_COUNT and size < BATCH_BYTES:
                topic, seq, encoded = queued[end]
                batches.setdefault(topic, (seq, []))[1].append(encoded)
                size += len(encoded)
                end += 1
            for topic, (first_seq, items) in batches.items():
                self.pub.send(wire.encode_shouts(topic, self.node.uuid, first_seq, items))
            start = end

    def take_shouts(self) -> None:
        """Read the shouts waiting on the SUB (a batch, then the other sockets get a turn)."""
        events: list[GroupEvent] = []
        for _ in range(READ_BATCH):
            frame = self.sub.try_recv()
            if frame is None:
                break
            events += self.core.take_shout_frame(frame, self.joined)
        self.deliver(events)

    def deliver(self, events: list[GroupEvent]) -> None:
        """Hand on events that change no membership (shouts, whispers)."""
        if events:
            self.host.deliver(events)

    # -- whispers sent ---------------------------------------------------------------------------

    def send_whisper(self, peer_uuid: uuid_module.UUID, body: Any, deadline: Deadline,
                     future: Whisper) -> None:
        """Send a whisper; ``future`` settles when the peer acknowledges it, or fails."""
        if self.closing:
            settle(future, ClosedError("groups closed before the whisper was sent"))
            return
        tracked = self.core.peers.get(peer_uuid)
        if tracked is None:
            if peer_uuid in self.core.gone:
                settle(future, PeerNotFound(f"peer {peer_uuid} has gone"))
            else:  # not discovered yet: wait for it, within the whisper's deadline
                self.parked.append((peer_uuid, body, deadline, future))
            return
        dealer = self.dealers.get(peer_uuid) or self.open_dealer(peer_uuid)
        if dealer is None:
            settle(future, self.refused.get(peer_uuid) or PeerNotFound(
                f"peer {peer_uuid} has gone"))
            return
        call_id = self.core.start_whisper(peer_uuid, deadline.at, future)
        try:
            frame = wire.encode_whisper(call_id, self.node.uuid, self.node.name, body)
        except EncodeError as exc:
            self.core.answered(call_id)
            settle(future, exc)
            return
        if not dealer.try_send(frame):
            self.core.answered(call_id)
            limit = dealer.options.send_hwm
            settle(future, BusyError(f"{limit:,} whispers to {tracked.name} are waiting already"))

    def open_dealer(self, peer_uuid: uuid_module.UUID) -> Socket | None:
        """A DEALER connected to the peer's whisper ROUTER; None if it is gone or refused.

        It queues while the connection is made: the whisper's deadline bounds the wait.
        """
        found = [p for p in self.node.peers(role=wire.ROLE) if p.uuid == peer_uuid]
        if not found:
            return None
        dealer = self.node.client_socket(SocketKind.DEALER)
        if not self.connect(dealer, found[0], wire.ROLE):
            dealer.close()
            return None
        self.dealers[peer_uuid] = dealer
        self.dealer_peer[dealer] = peer_uuid
        self.poller.register(dealer)
        return dealer

    def retire_dealer(self, peer_uuid: uuid_module.UUID) -> None:
        """The peer has gone: its DEALER still takes, for ``ACK_GRACE`` at most, the acks that
        were on their way (the whispers they do not answer then fail with ``BrokenError``)."""
        dealer = self.dealers.pop(peer_uuid)
        until = time.monotonic() + ACK_GRACE
        self.core.went(peer_uuid, until)
        self.draining[dealer] = until
        self.take_acks(dealer)  # those already here, and closes it when none is missing

    def close_dealer(self, dealer: Socket) -> None:
        """Close the DEALER of a peer gone, once it owes no acknowledgement or its grace ended."""
        self.draining.pop(dealer, None)
        self.dealer_peer.pop(dealer, None)
        self.poller.unregister(dealer)
        dealer.close()

    def take_acks(self, dealer: Socket) -> None:
        """Read a peer's acknowledgements and settle the whispers they answer."""
        for _ in range(READ_BATCH):
            frame = dealer.try_recv()
            if frame is None:
                break
            answered = self.core.take_ack(frame)
            if answered is not None:
                settle(*answered)
        if dealer in self.draining and not self.core.waiting_on(self.dealer_peer[dealer]):
            self.close_dealer(dealer)

    def settle_expired(self, now: float) -> None:
        """Fail the whispers whose deadline has passed (parked, or waiting for their ack)."""
        late = [whisper for whisper in self.parked if whisper[2].expired(now)]
        if late:
            self.parked = [whisper for whisper in self.parked if not whisper[2].expired(now)]
        for peer_uuid, _, _, future in late:
            settle(future, PeerNotFound(f"no peer {peer_uuid} took part in groups in time "
                                        f"(beacon port {self.node.port})"))
        for waiter, peer_uuid in self.core.expired(now):
            tracked = self.core.peers.get(peer_uuid)
            if tracked is None:  # it went, and its grace for late acks has passed
                settle(waiter, BrokenError(f"peer {peer_uuid} went before acknowledging a "
                                           "whisper; it may or may not have it"))
            else:
                settle(waiter, Timeout(f"whisper to {tracked.name} ({peer_uuid}) not "
                                       "acknowledged in time"))
        for dealer in [d for d, until in self.draining.items() if until <= now]:
            self.close_dealer(dealer)

    # -- whispers taken --------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer the whispers waiting on the ROUTER (acknowledged before they are handed on)."""
        events: list[GroupEvent] = []
        for _ in range(READ_BATCH):
            frames = self.router.try_recv_multipart()
            if frames is None:
                break
            answer, event = self.core.serve(frames)
            if event is not None:
                events.append(event)
            if answer is not None:
                self.router.try_send_multipart(answer)  # a ROUTER drops what it cannot route
        self.deliver(events)
