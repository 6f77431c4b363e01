"""The blocking driver of the call core, for ``rpc.Client`` and ``failover.FailoverClient``.

Calls may come from any thread of the process: the thread that made the client, an RPC handler
of any kind, a callback, a thread of the user's own. Each calling thread gets its own DEALER per
node, made on its first call and kept in a ``threading.local`` (the precedent of ipykernel's
IOPubThread), so a socket is only ever used by one thread, and a call waits in a plain blocking
receive, as fast as a hand-written REQ. What the threads share, the call core (routes, calls in
flight, counters), is kept under one lock.

``close()`` from any thread closes every thread's sockets: those of a thread that is not inside a
call at once (the lock hands them over), those of a thread in a call by that thread itself, which
looks at the client at least every ``SLICE`` seconds; ``close`` waits for that.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from zmqkit import (
    ClosedError,
    Node,
    PeerNotFound,
    Poller,
    Socket,
    Timeout,
    WrongThread,
    ZmqkitError,
    codec,
)

from .connections import Connections
from .core import CONNECT_WAIT, SLICE, STREAM_WINDOW, Call, CallCore, Phase
from .routes import ROLE, Target

__all__ = ["CLOSE_WAIT", "SyncCaller"]

CLOSE_WAIT = 2 * SLICE  # how long close() waits for threads in a call to give their sockets up
_DONE, _ROUTING, _IN_FLIGHT = Phase.DONE, Phase.ROUTING, Phase.IN_FLIGHT


class _Owner:
    """One calling thread's sockets, and whether that thread is inside a call now."""

    __slots__ = ("__weakref__", "busy", "conns")

    def __init__(self, conns: Connections) -> None:
        self.conns = conns
        self.busy = False


def _close_when_gone(lock: threading.RLock, conns: Connections) -> None:
    """A calling thread ended: its sockets go with it."""
    with lock:
        conns.close()


class SyncCaller:
    """Calls the nodes of one name through ``core``, from any thread.

    Attached to ``node`` once made (closed with it). Every call has a deadline (``timeout``
    seconds unless the call says otherwise) shared by all its attempts.
    """

    def __init__(self, node: Node, core: CallCore, *, timeout: float) -> None:
        self.node = node
        self.name = core.name
        self.timeout = timeout
        core.explain(keyed=node.security is not None, beacon_port=node.port)
        self._core = core
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._local = threading.local()
        self._owners: weakref.WeakSet[_Owner] = weakref.WeakSet()
        self._closed = False
        node.attach(self)  # a closed node refuses before anything is made

    def __enter__(self) -> SyncCaller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def close(self) -> None:
        """Close every thread's sockets and end the calls in flight with ClosedError.

        Idempotent, and callable from any thread (its node's close included).
        """
        with self._lock:
            if self._closed:
                return
            # closed first, then busy: a thread leaving a call clears busy, then reads closed,
            # so either this sees it idle and closes its sockets, or it sees closed and does
            self._closed = True
            owners = list(self._owners)
            for owner in owners:
                if not owner.busy:
                    owner.conns.close()
            error = ClosedError(f"{self!r} was closed")
            for call in list(self._core.calls.values()):
                self._core.end(call, error)
            self._idle.wait_for(lambda: not any(owner.busy for owner in owners), CLOSE_WAIT)
        self.node.detach(self)

    def stats(self) -> dict[str, int]:
        """Counters: calls, sent, answered, retried, unreachable, refused, dropped-*."""
        with self._lock:
            return dict(self._core.stats)

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the service called, and the calls made."""
        stats = self.stats()
        return {"target": self.name, "calls": stats.get("calls", 0), "stats": stats}

    # -- calling -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Call ``method(*args, **kwargs)`` on a node of the name and return its result.

        A generator method's items come back as a list. ``idempotent=True`` lets the call be
        sent again to another node if the first one fails before answering.

        Raises:
            RemoteError: the method raised on the node.
            BrokenError: a call not marked idempotent lost its node before an answer.
            Timeout: no answer in time (the message says whether it may have run).
            PeerNotFound: no node of that name was found in time.
            SecurityError: the nodes found are ones this node may not talk to.
            ClosedError: the client is closed.
        """
        return self._call(method, args, kwargs, timeout, idempotent)

    def call_with(
        self,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> Any:
        """``call`` with the arguments as values, for methods with a ``timeout`` parameter."""
        return self._call(method, args, kwargs or {}, timeout, idempotent)

    def _call(self, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
              timeout: float | None, idempotent: bool) -> Any:
        """One call, start to end, in the calling thread (arguments by position: see begin)."""
        try:
            owner: _Owner = self._local.owner
        except AttributeError:  # this thread's first call
            owner = self._new_owner()
        call, target = self._start(owner, method, args, kwargs, timeout, idempotent)
        try:
            if call.phase is _IN_FLIGHT:  # sent at once: the usual case, one plain receive
                self._wait(owner, call)
            if call.phase is not _DONE:
                self._drive(owner, call, target)
        finally:
            owner.busy = False  # then look at closed: close() sees one or the other (see close)
            if call.phase is not _DONE or self._closed:
                self._leave(owner, call)
        if call.error is not None:
            raise call.error
        return call.result

    def _stream(self, method: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
                timeout: float | None) -> Iterator[Any]:
        """The items a generator method yields, as they come (``timeout``: the longest wait
        for one), granting the server credit as they are taken (see ``core``)."""
        home = owner = getattr(self._local, "owner", None) or self._new_owner()
        call, target = self._start(owner, method, args, kwargs, timeout, False, stream=True)
        took = self._core.took
        done = False
        try:
            while True:
                try:
                    self._drive(owner, call, target)
                    target = None
                    with self._lock:
                        items, call.items = call.items, None
                finally:
                    self._leave(owner, None)
                for item in items or ():
                    yield item
                    limit = took(call, 1)
                    if limit is not None:
                        self._grant(home, call, limit)
                if call.phase is _DONE:
                    break
                owner = self._enter()
                if owner is not home:
                    self._leave(owner, None)
                    raise WrongThread(
                        f"a stream of {self!r} is read by the thread that started it"
                    )
                with self._lock:
                    self._core.waiting(call, time.monotonic())
            call.outcome()  # raises the error it ended with, if any
            done = True
        finally:
            if not done:
                self._cancel(home, call)

    # -- the parts -----------------------------------------------------------------------------

    def _new_owner(self) -> _Owner:
        """The calling thread's first call: its own sockets, closed with it (or with us)."""
        owner = self._local.owner = _Owner(Connections(self.node))
        weakref.finalize(owner, _close_when_gone, self._lock, owner.conns)
        with self._lock:
            self._owners.add(owner)
        return owner

    def _enter(self) -> _Owner:
        """The calling thread's sockets, now in use by it (closed: ClosedError)."""
        owner = getattr(self._local, "owner", None) or self._new_owner()
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            owner.busy = True
        return owner

    def _leave(self, owner: _Owner, call: Call | None) -> None:
        """The thread is out of the call: end it if it is still running (an error, or an
        interrupt, left it), and close the thread's sockets if the client was closed meanwhile.
        ``owner.busy`` may be cleared already (``_call`` does it first, to skip this)."""
        if call is not None and call.phase is not _DONE:
            with self._lock:
                self._core.abandon(call)
        owner.busy = False  # then look at closed: close() sees one or the other (see close)
        if self._closed:
            with self._lock:
                owner.conns.close()
                self._idle.notify_all()

    def _start(self, owner: _Owner, method: str, args: tuple[Any, ...] | list[Any],
               kwargs: dict[str, Any], timeout: float | None, idempotent: bool, *,
               stream: bool = False) -> tuple[Call, Target | None]:
        """Begin a call, the thread now in it, and route it; send it too when this thread's
        socket to that node can take it at once (the usual case: one lock for all of it).

        Returns the call and, when it still has to be sent, its target (None: sent, or no
        node known yet).

        Raises:
            ClosedError: the client is closed.
            ConfigError, EncodeError: a bad timeout, arguments the wire cannot carry.
        """
        core, node = self._core, self.node
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            now = time.monotonic()
            if core.version != node.peers_version:
                version = node.peers_version  # first: a change after this read is seen next
                core.sync(node.peers(self.name, role=ROLE), now, version)
            call = core.begin(method, args, kwargs, idempotent,
                              self.timeout if timeout is None else timeout, now, stream)
            owner.busy = True
            target = None
            try:
                target = core.route(call, now)
                if target is None:
                    return call, None
                conns = owner.conns
                if conns.generation == core.generation:  # this thread's sockets are up to date
                    sock = conns.sockets.get(target)
                    if sock is not None and sock.try_send(call.frame):
                        core.sent(call, target, now, sock)
                        return call, None
                return call, target
            except BaseException:  # the send failed (its socket broke): the call ends with it
                if target is not None and call.phase is _ROUTING:
                    core.unreachable(call, target, now)
                core.abandon(call)
                owner.busy = False
                raise

    def _drive(self, owner: _Owner, call: Call, target: Target | None = None) -> None:
        """Run ``call`` until it ends (or, for a stream, until it has items to hand over);
        ``target``: where it was routed already."""
        core, lock, node = self._core, self._lock, self.node
        if target is not None:
            self._send(owner, call, target, time.monotonic())
        while True:
            if call.phase is _IN_FLIGHT:  # the usual case: wait for the answer
                self._wait(owner, call)
                if call.phase is _DONE:
                    return
                if call.stream and call.items:
                    self._drain(owner, call)
                    return
            now = time.monotonic()
            target = None
            with lock:
                if self._closed:
                    core.end(call, ClosedError(f"{self!r} was closed"))
                elif core.version != node.peers_version:
                    version = node.peers_version  # first: a change after this read is seen next
                    core.sync(node.peers(self.name, role=ROLE), now, version)
                if call.phase is not _DONE:
                    core.expire(call, now)
                if call.phase is _ROUTING:
                    target = core.route(call, now)
                phase = call.phase
            if phase is _DONE or (call.stream and call.items):
                return
            if phase is _ROUTING:
                if target is None:
                    self._wait_for_discovery(call, now)
                else:
                    self._send(owner, call, target, now)

    def _send(self, owner: _Owner, call: Call, target: Target, now: float) -> None:
        conns = owner.conns
        if conns.generation == self._core.generation:
            sock = conns.sockets.get(target)
        else:
            sock = self._socket(owner, target)
        sent = False
        if sock is not None:
            sent = sock.try_send(call.frame)  # at once if a connection is up
            if not sent:  # none yet: give it a moment, then the next node gets the request
                wait = min(CONNECT_WAIT, call.remaining(now))
                sent = sock.poll_writable(wait) and sock.try_send(call.frame)
        with self._lock:
            if sent:
                self._core.sent(call, target, time.monotonic(), via=sock)
            else:
                self._core.unreachable(call, target, time.monotonic())

    def _socket(self, owner: _Owner, target: Target) -> Socket | None:
        """This thread's socket to ``target`` (None: this node may not talk to it)."""
        conns = owner.conns
        if conns.generation != self._core.generation:
            with self._lock:
                targets = list(self._core.targets.targets.values())
                generation = self._core.generation
            _, _, refused = conns.sync(targets)
            conns.generation = generation
            if refused:
                with self._lock:
                    for refused_target, error in refused:
                        self._core.refuse(refused_target, error, time.monotonic())
        return conns.socket(target)

    def _wait(self, owner: _Owner, call: Call) -> None:
        """Wait for an answer from the nodes the call went to, at most until its next deadline
        and a slice (to look at discovery and at close)."""
        timeout = min(call.deadline, call.attempt_deadline) - time.monotonic()
        if timeout > SLICE:
            timeout = SLICE
        elif timeout < 0.0:
            timeout = 0.0
        conns = owner.conns
        target = call.target
        if len(call.sent_to) == 1 and target is not None:  # usually: a plain receive, as a REQ
            sock = conns.sockets.get(target)
            if sock is None:  # its node has just gone: the next look at discovery says what next
                time.sleep(timeout)
                return
            try:
                frame = sock.recv(timeout)
            except Timeout:
                self._after_silence(owner, call)
                return
            now = time.monotonic() if call.stream else None  # only a stream's deadline moves
            with self._lock:
                self._core.receive(target.uuid, frame, sock, now)
            return
        with self._lock:
            targets = self._core.targets.targets
            asked = [targets[uuid] for uuid in call.sent_to if uuid in targets]
        by_socket = {
            sock: target for target in asked if (sock := conns.socket(target)) is not None
        }
        if not by_socket:
            time.sleep(timeout)
            return
        ready = Poller(list(by_socket)).poll(timeout)  # the first answer from any of them wins
        for item in ready:
            assert isinstance(item, Socket)
            while (answer := item.try_recv()) is not None:
                with self._lock:
                    self._core.receive(by_socket[item].uuid, answer, via=item,
                                       now=time.monotonic())
        if not ready:
            self._after_silence(owner, call)

    def _drain(self, owner: _Owner, call: Call) -> None:
        """A stream's item came: take the ones queued behind it too (at most a window)."""
        target = call.target
        sock = owner.conns.sockets.get(target) if target is not None else None
        if sock is None or target is None:
            return
        receive, node, now = self._core.receive, target.uuid, time.monotonic()
        with self._lock:
            for _ in range(STREAM_WINDOW):
                frame = sock.try_recv()
                if frame is None:
                    return
                receive(node, frame, sock, now)
                if call.phase is not _IN_FLIGHT:
                    return

    def _after_silence(self, owner: _Owner, call: Call) -> None:
        """A call that timed out in flight leaves fresh sockets behind it (Lazy Pirate)."""
        if time.monotonic() < call.deadline or (call.stream and call.items):
            return
        with self._lock:
            targets = self._core.targets.targets
            asked = [targets[uuid] for uuid in call.sent_to if uuid in targets]
        for target in asked:
            owner.conns.reset(target)

    def _wait_for_discovery(self, call: Call, now: float) -> None:
        """No node known: wait a slice for one to appear (``expire`` ends the wait in time)."""
        try:
            self.node.wait_for(self.name, min(SLICE, call.remaining(now)), role=ROLE)
        except PeerNotFound:
            return
        with self._lock:
            self._core.version = -1  # one serves the name: look at the peers again now

    def _grant(self, home: _Owner, call: Call, limit: int) -> None:
        """Let the server send a stream's items up to ``limit`` (best effort: a CREDIT that
        cannot go means the connection is gone, which the deadline then reports)."""
        sock = call.via
        if getattr(self._local, "owner", None) is home and isinstance(sock, Socket) and (
                not sock.closed):
            with contextlib.suppress(ZmqkitError):
                sock.try_send(codec.encode_credit(call.call_id, limit))

    def _cancel(self, home: _Owner, call: Call | None) -> None:
        """A stream left early: end it, and tell its node to stop producing (best effort)."""
        if call is None:
            return
        with self._lock:
            running = call.phase is not _DONE
            self._core.abandon(call)
        sock = call.via
        mine = getattr(self._local, "owner", None) is home
        if running and mine and isinstance(sock, Socket) and not sock.closed:
            with contextlib.suppress(ZmqkitError):  # best effort: the node stops it on its own too
                sock.try_send(codec.encode_cancel(call.call_id))
