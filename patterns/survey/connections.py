"""One set of survey sockets: a DEALER per node asked, kept in step with discovery.

A set belongs to one owner (a thread for ``Surveyor``, the loop for ``AsyncSurveyor``) and runs
one survey at a time, so every answer read from its sockets is for that survey or a late one for
an earlier survey (dropped by call id). The sockets come from ``node.client_socket`` and are
connected with ``connect_peer``, so the node's CURVE keys apply to every one of them.
"""

from __future__ import annotations

import uuid as uuid_module

from zmqkit import Node, Peer, Poller, Socket, SocketKind, SocketOptions, ZmqkitError

from .core import Responder, SurveyState

__all__ = ["ROLE", "SURVEY_OPTIONS", "Connections"]

ROLE = "rpc"  # a survey speaks the RPC wire to what nodes serve as "rpc"
SURVEY_OPTIONS = SocketOptions(immediate=True)  # a request is never queued for a node not connected


class Connections:
    """The sockets of one owner, one per node called ``name`` (None: every node serving RPC).

    ``poller``, when given, watches every socket of the set (the blocking surveyor's wait).
    """

    def __init__(self, node: Node, name: str | None, *, asyncio: bool = False,
                 poller: Poller | None = None) -> None:
        self.node = node
        self.name = name
        self.version = -1
        self.sockets: dict[uuid_module.UUID, tuple[str, Socket]] = {}
        self.refusals: dict[uuid_module.UUID, ZmqkitError] = {}  # peers we may not talk to
        self._owners: dict[Socket, uuid_module.UUID] = {}
        self._asyncio = asyncio
        self._poller = poller

    def __len__(self) -> int:
        return len(self.sockets)

    def owner_of(self, sock: Socket) -> uuid_module.UUID | None:
        """The node whose socket ``sock`` is (None: not one of this set's)."""
        return self._owners.get(sock)

    def refresh(self, state: SurveyState) -> tuple[list[uuid_module.UUID], list[uuid_module.UUID]]:
        """Sync with discovery, tell ``state``; return the UUIDs (added, removed)."""
        version = self.node.peers_version  # first: then the list is at least this new
        peers = self.node.peers(self.name, role=ROLE)
        self.version = version
        current = {peer.uuid: peer for peer in peers}
        removed = []
        for node_uuid, (endpoint, sock) in list(self.sockets.items()):
            peer = current.get(node_uuid)
            if peer is None or peer.endpoints[ROLE] != endpoint:
                self._forget(node_uuid, sock)
                removed.append(node_uuid)
                state.gone(node_uuid)
        for node_uuid in [uuid for uuid in self.refusals if uuid not in current]:
            del self.refusals[node_uuid]
        added = []
        for peer in peers:
            responder = Responder(peer.name, peer.uuid)
            if peer.uuid not in self.sockets and peer.uuid not in self.refusals:
                self._connect(peer)
            if peer.uuid in self.refusals:
                state.refused(responder, self.refusals[peer.uuid])
            elif state.add(responder):
                added.append(peer.uuid)
        return added, removed

    def _connect(self, peer: Peer) -> None:
        sock = self.node.client_socket(SocketKind.DEALER, options=SURVEY_OPTIONS,
                                       asyncio=self._asyncio)
        try:
            endpoint = sock.connect_peer(peer, ROLE)
        except ZmqkitError as exc:  # refused by security, or an endpoint we cannot use
            sock.close()
            self.refusals[peer.uuid] = exc
            return
        self.sockets[peer.uuid] = (endpoint, sock)
        self._owners[sock] = peer.uuid
        if self._poller is not None:
            self._poller.register(sock)

    def _forget(self, node_uuid: uuid_module.UUID, sock: Socket) -> None:
        if self._poller is not None:
            self._poller.unregister(sock)
        sock.close()
        del self.sockets[node_uuid]
        del self._owners[sock]

    def close(self) -> None:
        """Close every socket of the set (safe to call twice)."""
        for node_uuid, (_, sock) in list(self.sockets.items()):
            self._forget(node_uuid, sock)
        self.refusals.clear()
        self.version = -1
