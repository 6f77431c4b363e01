"""The sockets of one owner (a calling thread, or an event loop): one DEALER per node of a name.

The node makes each socket (``client_socket``, then ``connect_peer``, which applies its CURVE
keys), so a node this one may not talk to is refused here, before anything is sent. Every socket
is made, used and closed by its owner; ``close`` from elsewhere is for an owner that is idle (or
gone), under the lock of the part that keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable

from zmqkit import Node, Socket, SocketKind, SocketOptions, ZmqkitError

from .routes import ROLE, Target

__all__ = ["CLIENT_OPTIONS", "Connections"]

CLIENT_OPTIONS = SocketOptions(immediate=True)  # a request never queues for a node not connected


class Connections:
    """One DEALER per target, all belonging to one thread (or one loop, with ``asyncio``).

    Sockets are keyed by the ``Target`` object itself: a node whose endpoint changed is a new
    target, so it gets a new socket, and the old one is closed with the old target.
    """

    def __init__(self, node: Node, *, asyncio: bool = False) -> None:
        self.node = node
        self.asyncio = asyncio
        self.sockets: dict[Target, Socket] = {}
        self.generation = -1  # the core's generation of targets these sockets follow
        self.closed = False

    def __repr__(self) -> str:
        return f"<zmqkit rpc connections to {len(self.sockets)} nodes>"

    def socket(self, target: Target) -> Socket | None:
        """The socket to ``target``, if there is one."""
        return self.sockets.get(target)

    def sync(self, targets: Iterable[Target]) -> tuple[list[Target], list[Target],
                                                     list[tuple[Target, ZmqkitError]]]:
        """Follow ``targets``: connect to the new ones, close the sockets of those gone.

        Returns (opened, closed, refused): a refused target has no socket, and the error says why.
        """
        wanted = set(targets)
        closed = [target for target in self.sockets if target not in wanted]
        for target in closed:
            self.sockets.pop(target).close()
        opened, refused = [], []
        for target in wanted:
            if target in self.sockets:
                continue
            try:
                self.open(target)
            except ZmqkitError as exc:  # refused by security, or an endpoint we cannot use
                refused.append((target, exc))
            else:
                opened.append(target)
        return opened, closed, refused

    def open(self, target: Target) -> Socket:
        """Connect a new socket to ``target`` (replacing any old one).

        Raises:
            SecurityError: this node may not talk to it (keys).
            ConfigError: its endpoint cannot be used.
        """
        assert target.peer is not None  # Targets.sync always records the peer
        old = self.sockets.pop(target, None)
        if old is not None:
            old.close()
        sock = self.node.client_socket(
            SocketKind.DEALER, options=CLIENT_OPTIONS, asyncio=self.asyncio
        )
        try:
            sock.connect_peer(target.peer, ROLE)
        except BaseException:
            sock.close()
            raise
        self.sockets[target] = sock
        return sock

    def reset(self, target: Target) -> Socket | None:
        """After a timeout, a fresh socket for ``target`` (the Lazy Pirate reset): a connection
        that libzmq dropped for good (say, after a reply over the size limit) is made anew."""
        if target not in self.sockets:
            return None
        try:
            return self.open(target)
        except ZmqkitError:  # refused now: the next sync sees it
            return None

    def close(self) -> None:
        """Close every socket. Safe to call twice."""
        self.closed = True
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
