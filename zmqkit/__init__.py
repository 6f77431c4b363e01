"""zmqkit: broker-less peer-to-peer messaging on ZeroMQ.

General layout (the building blocks; the patterns built on them live in ``zmqkit.patterns``,
the terminal demo nodes in ``zmqkit.demos``; the repository keeps them in its top-level
``patterns/`` and ``demos/`` folders, installed under this namespace):

- ``errors``   the exception tree, drawn in its docstring
- ``codec``    the CBOR wire envelope and the beacon datagram: pure, no sockets, no clock
- ``jsonform`` the reversible JSON form of wire values, what the command reads and prints (pure)
- ``deadline`` one monotonic deadline shared by every step of an operation
- ``security`` CURVE keypairs and keyrings, and the policy a socket applies to a peer
- ``wakeup``   ``Wakeup`` and ``LoopWakeup``: wake a polling thread or a loop from any thread
- ``sockets``  socket blocks: the only place that creates ZeroMQ sockets and sets options
- ``zap``      the ZAP handler thread that admits CURVE peers by keyring
- ``service``  ``ServiceThread``: the named thread that owns a part's sockets; ``call_on_loop``
- ``peers``    the peer table: fed datagrams and ``now``, returns presence events (pure)
- ``beacon``   the UDP beacon thread and discovery scopes
- ``metrics``  ``Latency``: the cheap histogram parts count their durations in (pure)
- ``introspect`` the admin endpoint that answers ``zmqkit.introspect`` with the node's report
- ``node``     ``Node``: a named identity, its beacon, its parts, and the sockets they get
- ``cli``      the ``zmqkit`` command (on top, with ``zmqkit.demos``)

Patterns use only the names below and ``zmqkit.codec`` (an import-linter contract says so).
"""

from __future__ import annotations

from .beacon import DEFAULT_PORT, PORT_VARIABLE, Scope, Seed, default_port
from .codec import Kind
from .deadline import Deadline, check_timeout
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
    SecurityError,
    Timeout,
    UnexpectedKind,
    WrongThread,
    ZmqkitError,
    remote_error,
)
from .metrics import Latency
from .node import Node
from .peers import EventKind, Peer, PeerEvent, PeerTable
from .security import Keypair, Keyring
from .service import LoopOwner, ServiceThread, call_on_loop
from .sockets import AsyncSocket, Poller, Socket, SocketKind, SocketOptions
from .wakeup import LoopWakeup, Wakeup

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
    "Keypair",
    "Keyring",
    "Kind",
    "Latency",
    "LoopOwner",
    "LoopWakeup",
    "MessageTooLarge",
    "MethodNotFound",
    "Node",
    "Peer",
    "PeerEvent",
    "PeerNotFound",
    "PeerTable",
    "Poller",
    "ProtocolError",
    "RemoteError",
    "Scope",
    "SecurityError",
    "Seed",
    "ServiceThread",
    "Socket",
    "SocketKind",
    "SocketOptions",
    "Timeout",
    "UnexpectedKind",
    "Wakeup",
    "WrongThread",
    "ZmqkitError",
    "call_on_loop",
    "check_timeout",
    "default_port",
    "remote_error",
]
