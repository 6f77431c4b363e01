"""The publishers one SUB socket is connected to, kept in step with discovery.

Every node that advertises ``pub`` is connected to, this node's own publisher included, through
``connect_peer``: with keys, a publisher must present a key from the keyring (one that may not is
skipped, warned about once and counted as ``refused-publishers``, as is an endpoint that cannot
be connected to), and the connection is encrypted. A connection that ZeroMQ dropped for good (it
does not reconnect after a frame over the maximum size) is made again and counted as
``reconnected``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter

from zmqkit import ConfigError, Node, Peer, SecurityError, Socket

__all__ = ["ROLE", "Publishers"]

ROLE = "pub"  # what a publisher advertises, and what subscribers connect to

log = logging.getLogger("zmqkit.pubsub")


class Publishers:
    """The endpoints ``sock`` is connected to; ``refresh`` connects and disconnects.

    Used by the socket's owner only (its thread, or its loop).
    """

    def __init__(self, node: Node, sock: Socket, counts: Counter[str]) -> None:
        self.node = node
        self.connected: set[str] = set()
        self._sock = sock
        self._counts = counts
        self._refused: set[str] = set()  # skipped for their keys (warned once each)
        self._version: tuple[int, str | None] = (-1, None)
        sock.watch_drops()

    def __len__(self) -> int:
        return len(self.connected)

    def refresh(self) -> bool:
        """Connect to new publishers and drop those gone; True if discovery changed."""
        dropped = self._sock.dropped()
        if dropped:
            self._reconnect(dropped)
        version = (self.node.peers_version, self.node.endpoints.get(ROLE))
        if version == self._version:
            return False
        self._version = version
        wanted = self._wanted()
        for endpoint in self.connected - wanted.keys():
            self._sock.disconnect(endpoint)
            self.connected.discard(endpoint)
        for endpoint in wanted.keys() - self.connected:
            try:
                self._sock.connect_peer(wanted[endpoint], ROLE)
            except (SecurityError, ConfigError) as exc:  # refused key, or a bad endpoint: skipped
                if endpoint not in self._refused:
                    self._refused.add(endpoint)
                    self._counts["refused-publishers"] += 1
                    log.warning("not subscribing to %s: %s", endpoint, exc)
                continue
            self.connected.add(endpoint)
        return True

    def _reconnect(self, dropped: list[str]) -> None:
        """Connect again to the publishers whose connection ZeroMQ dropped: after a protocol
        error (a publication over this socket's maximum size) it would not by itself."""
        wanted = self._wanted()
        for endpoint in set(dropped) & self.connected:
            self._sock.disconnect(endpoint)
            self.connected.discard(endpoint)
            if endpoint in wanted:
                with contextlib.suppress(SecurityError, ConfigError):  # refresh says why
                    self._sock.connect_peer(wanted[endpoint], ROLE)
                    self.connected.add(endpoint)
                    self._counts["reconnected"] += 1

    def _wanted(self) -> dict[str, Peer]:
        """Endpoint -> peer of every publisher to connect to, this node's own included."""
        wanted = {peer.endpoints[ROLE]: peer for peer in self.node.peers(role=ROLE)}
        if ROLE in self.node.endpoints:
            wanted[self.node.endpoints[ROLE]] = self._own_peer()
        return wanted

    def _own_peer(self) -> Peer:
        """This node as its peers see it, to connect to its own publisher like any other."""
        node = self.node
        return Peer(
            node.name, node.uuid, dict(node.endpoints), dict(node.headers), 0, node.host, 0.0, 0.0
        )
