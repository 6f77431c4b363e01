"""zmqkit: broker-less peer-to-peer messaging on ZeroMQ.

General layout (the building blocks; the patterns built on them live in ``zmqkit.patterns``,
the terminal demo nodes in ``zmqkit.demos``; the repository keeps them in its top-level
``patterns/`` and ``demos/`` folders, installed under this namespace):

- ``errors``   the exception tree, drawn in its docstring
- ``codec``    the CBOR wire envelope and the beacon datagram: pure, no sockets, no clock
- ``deadline`` one monotonic deadline shared by every step of an operation
- ``sockets``  socket blocks: the only place that creates ZeroMQ sockets and sets options
- ``peers``    the peer table: fed datagrams and ``now``, returns presence events (pure)
- ``beacon``   the UDP beacon thread and discovery scopes
- ``wakeup``   ``Wakeup``: one thread wakes another that waits in a ``zmq.Poller``
- ``node``     ``Node``: a named identity, its beacon, its endpoints and what it serves
- ``cli``      the ``zmqkit`` command
"""

from __future__ import annotations

from .beacon import DEFAULT_PORT, PORT_VARIABLE, Scope, Seed, default_port
from .codec import Kind
from .deadline import Deadline
from .errors import (
    BadArguments,
    BrokenError,
    BusyError,
    ClosedError,
    ConfigError,
    EncodeError,
    MessageTooLarge,
    MethodNotFound,
    PeerNotFound,
    ProtocolError,
    RemoteError,
    Timeout,
    ZmqkitError,
)
from .node import Node
from .peers import EventKind, Peer, PeerEvent, PeerTable
from .sockets import AsyncSocket, Socket, SocketOptions
from .wakeup import Wakeup

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PORT",
    "PORT_VARIABLE",
    "AsyncSocket",
    "BadArguments",
    "BrokenError",
    "BusyError",
    "ClosedError",
    "ConfigError",
    "Deadline",
    "EncodeError",
    "EventKind",
    "Kind",
    "MessageTooLarge",
    "MethodNotFound",
    "Node",
    "Peer",
    "PeerEvent",
    "PeerNotFound",
    "PeerTable",
    "ProtocolError",
    "RemoteError",
    "Scope",
    "Seed",
    "Socket",
    "SocketOptions",
    "Timeout",
    "Wakeup",
    "ZmqkitError",
    "default_port",
]
