"""The groups thread of one node, and how any other thread hands it work.

``GroupsRunner`` is what ``Groups`` and ``AsyncGroups`` share: made, it starts the named groups
thread (a ``ServiceThread``, which makes the sockets there) and advertises the node's two roles.
From any thread it then queues shouts, hands over membership changes and whispers as commands
(run at once when the caller is the groups thread itself, a callback), and answers membership
questions from what the thread last published, without waiting for it. It is the ``Host`` the
engine meets; the front-ends add the waiting, the inbox and the callbacks.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import uuid as uuid_module
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from zmqkit import (
    BrokenError,
    ClosedError,
    ConfigError,
    Deadline,
    Node,
    Peer,
    PeerEvent,
    ServiceThread,
    codec,
)

from . import wire
from .core import GroupEvent, Member
from .engine import Command, Engine, Whisper

__all__ = ["DEFAULT_TIMEOUT", "GroupsRunner", "PeerRef", "peer_uuid_of"]

DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")
PeerRef = uuid_module.UUID | Peer | Member  # who to whisper to


def peer_uuid_of(peer: PeerRef) -> uuid_module.UUID:
    """The UUID of whom to whisper to, however it was named."""
    return peer if isinstance(peer, uuid_module.UUID) else peer.uuid


class GroupsRunner:
    """The groups thread of ``node``: started when made, stopped by ``close`` (any thread).

    Args:
        node: a running node without groups yet.
        deliver: called in the groups thread with each batch of events.
        timeout: how long the thread may take to start.

    Raises:
        ConfigError: the node has its groups already, or the sockets could not be bound.
        ClosedError: the node is not running.
        Timeout: the thread was not ready in time.
    """

    def __init__(self, node: Node, deliver: Callable[[list[GroupEvent]], None], *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if wire.ROLE in node.endpoints:
            raise ConfigError(f"{node!r} already has its groups; share them")
        if not node.running:
            raise ClosedError(f"{node!r} is not running; start it first")
        self.node = node
        self._deliver = deliver
        self._lock = threading.Lock()  # the hand-off: commands, shouts and their numbers
        self._announcing = threading.Lock()  # the groups header, against the close
        self._commands: list[Command] = []
        self._outbox: list[tuple[str, int, bytes]] = []  # (topic, seq, encoded [name, body])
        self._shout_seqs: dict[str, int] = {}
        self._presence: deque[PeerEvent] = deque()
        self._accepting = True
        self._closed = False
        self._withdrawn = False  # the node no longer announces these groups (for good)
        self._engine: Engine | None = None
        self._service = ServiceThread(f"zmqkit-groups:{node.name}", self._run)
        self._unsubscribe = node.on_event(self._on_presence)
        try:
            self._service.start(timeout)
            self._advertise(self.engine)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<zmqkit groups {self.node.name!r} in {sorted(self.joined)} {state}>"

    @property
    def engine(self) -> Engine:
        """The groups thread's engine (made by the thread before it was ready)."""
        if self._engine is None:
            raise ClosedError(f"the groups of {self.node.name!r} did not start")
        return self._engine

    @property
    def in_groups_thread(self) -> bool:
        """Whether the caller runs in the groups thread (a callback)."""
        return self._service.is_current

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and join it, then withdraw from discovery (called from the thread,
        by a callback: the thread does both when the callback returns). Safe to call twice.

        Discovery goes last, so that a peer that sees this node gone knows that it has closed:
        the acks it owed were sent first, and its sockets are closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
        with contextlib.suppress(ValueError):  # the node forgot its listeners already
            self._unsubscribe()
        self._service.stop(timeout)
        if not self._service.is_current:
            self._withdraw()  # done by the thread as it ended, unless it never ran or hangs

    # -- reading what the thread published (any thread, no waiting) ------------------------------

    @property
    def endpoint(self) -> str:
        """Where this node takes whispers ("" until the thread made its sockets)."""
        return self._engine.endpoint if self._engine is not None else ""

    @property
    def pub_endpoint(self) -> str:
        """Where this node publishes its shouts ("" until the thread made its sockets)."""
        return self._engine.pub_endpoint if self._engine is not None else ""

    @property
    def joined(self) -> frozenset[str]:
        """The groups this node is in, as the groups thread last published them."""
        return self._engine.joined if self._engine is not None else frozenset()

    def members(self, group: str) -> list[Member]:
        """The peers in ``group``, as the groups thread last published them."""
        return list(self._engine.view.get(group, ())) if self._engine is not None else []

    def groups(self) -> dict[str, list[Member]]:
        """Every group a known peer is in, as the groups thread last published them."""
        view = self._engine.view if self._engine is not None else {}
        return {group: list(members) for group, members in view.items()}

    def stats(self) -> dict[str, int]:
        """The groups thread's counters, fresh."""
        return self._engine.stats() if self._engine is not None else {}

    # -- handing work over (any thread) ----------------------------------------------------------

    def shout(self, group: str, body: Any) -> int:
        """Queue a shout; returns its sequence number on the group's topic. Never waits.

        Raises:
            ConfigError: not a valid group name.
            EncodeError: ``body`` cannot travel on the wire.
            ClosedError: closed.
        """
        topic = wire.topic_of(wire.check_group(group))
        encoded = wire.encode_shout(self.node.name, body)
        with self._lock:
            self._check_accepting()
            seq = self._shout_seqs.get(group, 0) + 1
            self._shout_seqs[group] = seq
            self._outbox.append((topic, seq, encoded))
        self._service.wake()
        return seq

    def change(self, group: str, join: bool) -> concurrent.futures.Future[None]:
        """Join (or leave) ``group`` in the groups thread; the future settles when done."""
        wire.check_group(group)
        return self.submit(lambda engine: engine.change(group, join))

    def submit_whisper(self, peer: PeerRef, body: Any, timeout: float) -> Whisper:
        """Whisper ``body`` to ``peer``; the future settles when it acknowledges, or fails.

        Raises:
            ConfigError: ``peer`` is this node.
            EncodeError: ``body`` cannot travel on the wire.
            ClosedError: closed.
        """
        peer_uuid = peer_uuid_of(peer)
        if peer_uuid == self.node.uuid:
            raise ConfigError("a node cannot whisper to itself")
        deadline = Deadline.after(timeout)
        codec.dumps(body)  # an EncodeError belongs to the caller, not to the groups thread
        future: Whisper = concurrent.futures.Future()
        self.post(lambda engine: engine.send_whisper(peer_uuid, body, deadline, future))
        return future

    def submit(self, work: Callable[[Engine], T]) -> concurrent.futures.Future[T]:
        """Run ``work`` in the groups thread; the future holds its result or its error."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run(engine: Engine) -> None:
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up
            try:
                future.set_result(work(engine))
            except Exception as exc:  # handed to the caller, who raises it
                future.set_exception(exc)

        self.post(run)
        return future

    def post(self, command: Command) -> None:
        """Hand ``command`` to the groups thread (in that thread: run it now)."""
        if self._service.is_current:
            command(self.engine)
            return
        with self._lock:
            self._check_accepting()
            self._commands.append(command)
        self._service.wake()

    def _check_accepting(self) -> None:
        if self._accepting:
            return
        if self._service.error is not None:
            raise BrokenError(f"the groups thread of {self.node.name!r} failed: "
                              f"{self._service.error!r}") from self._service.error
        raise ClosedError(f"{self!r} is closed")

    def _on_presence(self, event: PeerEvent) -> None:
        """In the beacon thread: queue the event for the groups thread."""
        self._presence.append(event)
        self._service.wake()

    # -- the Host of the engine (the groups thread) ----------------------------------------------

    def take_commands(self) -> list[Command]:
        """See ``Host.take_commands``."""
        with self._lock:
            commands, self._commands = self._commands, []
        return commands

    def take_shouts(self) -> list[tuple[str, int, bytes]]:
        """See ``Host.take_shouts``."""
        with self._lock:
            shouts, self._outbox = self._outbox, []
        return shouts

    def take_presence(self) -> list[PeerEvent]:
        """See ``Host.take_presence``."""
        events = []
        while self._presence:
            events.append(self._presence.popleft())
        return events

    def announce(self, joined: frozenset[str]) -> None:
        """See ``Host.announce``: refused once closing, the header being withdrawn."""
        with self._announcing:
            if self._closed or self._withdrawn:
                raise ClosedError(f"{self!r} is closing")
            self.node.set_header(wire.GROUPS_HEADER, wire.format_groups(joined))

    def _advertise(self, engine: Engine) -> None:
        """Announce the node's two roles (unless the thread has ended already)."""
        with self._announcing:
            if self._withdrawn:
                self._check_accepting()  # the thread failed: BrokenError
                raise ClosedError(f"{self!r} is closed")
            self.node.advertise(wire.PUB_ROLE, engine.pub_endpoint)
            self.node.advertise(wire.ROLE, engine.endpoint)

    def _withdraw(self) -> None:
        """Stop announcing groups, once: the header, then the shouts, then (what peers take for
        this node's GONE) the whispers."""
        with self._announcing:
            if self._withdrawn:
                return
            self._withdrawn = True
            self.node.set_header(wire.GROUPS_HEADER, None)
            self.node.withdraw(wire.PUB_ROLE)
            self.node.withdraw(wire.ROLE)

    def deliver(self, events: list[GroupEvent]) -> None:
        """See ``Host.deliver``: to the front-end."""
        self._deliver(events)

    def stop_accepting(self) -> list[Command]:
        """See ``Host.stop_accepting``."""
        with self._lock:
            self._accepting = False
        return self.take_commands()

    def _run(self, service: ServiceThread) -> None:
        engine = self._engine = Engine(self.node, service, self)
        try:
            engine.take_presence_snapshot()  # before ready: members() is right at once
            service.ready()
            engine.run()
        finally:
            try:
                engine.close()  # the acks owed are sent, the sockets closed...
            finally:
                self._withdraw()  # ... before peers see this node gone
