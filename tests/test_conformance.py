"""Conformance: every MUST of docs/protocol.md, checked from the outside, and a client written
from the document alone that interoperates with every pattern, with CURVE keys and without.

The foreign side of every test (``Beacons``, ``ForeignNode``, ``Caller``, ``ForeignServer``, the
raw PUB, SUB, farm, state and groups sockets) uses only pyzmq, cbor2, socket and what the
document says: the constants below are copied from it, and no frame is built or read with
zmqkit's codec. zmqkit is imported only to run the side under test.

Each MUST, and the test that checks it (sections of docs/protocol.md):

- 1: a caller looks for a peer that advertises the role it needs:
  ``test_a_caller_waits_for_the_role``; the life of an endpoint:
  ``test_a_node_announces_its_endpoints_as_they_come_and_go``
- 2, 3: a receiver refuses other tags, simple values, repeated keys, nesting to level 65, and a
  frame of another version, kind, item count or field type:
  ``test_a_server_refuses_what_sections_2_and_3_refuse``, ``test_a_subscriber_drops_...``
- 2, 4, 5: a sender puts nothing after the item, encodes a publication's head in the preferred
  form, sends beacons of text maps within 1200 bytes whose seq never goes down:
  ``test_every_frame_zmqkit_sends_is_one_valid_item``; a beacon with bytes after its body or
  other faults is dropped: ``test_a_node_drops_a_beacon_that_breaks_sections_2_and_5``
- 6.3: a caller matches answers by call id, drops the ones it no longer waits for and never uses
  call id 0: ``test_a_caller_matches_answers_by_call_id``, ``test_call_id_0``
- 6.4: a caller accepts either form of answer to a plain REQUEST:
  ``test_a_caller_accepts_either_form_of_answer``
- 6.7: a server never sends an item at or above the limit:
  ``test_a_server_never_sends_beyond_its_credit``; a caller checks each index and the count:
  ``test_a_caller_ends_a_broken_stream`` (and tests/test_rpc_core.py for an item beyond the
  credit); a caller sends no CREDIT to a stream that did not open with flow control:
  ``test_a_caller_falls_back_for_an_older_server``
- 7.1: a receiver drops a frame that is not a valid publication:
  ``test_a_subscriber_drops_what_is_not_a_valid_publication``
- 8: a receiving socket takes a frame of 64 MiB: ``test_a_server_takes_a_frame_of_64_mib``
- 8.1: a client connects only to a server whose key it trusts, a client without keys to no
  CURVE node, a server admits only its keyring: ``test_curve_*``
- 9.2: an UPDATES op numbers from 1: ``test_interop_state``

The interoperation tests (``test_interop_*``) run each pattern with the foreign client on one
side and zmqkit on the other, plaintext and with CURVE.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import cbor2
import pytest
import zmq
import zmq.auth.thread
from conftest import wait_until
from zmqkit.patterns import farm, groups, pubsub, rpc, state, survey

import zmqkit

# -- what the document says, copied from it --------------------------------------------------------

VERSION = 1
(REQUEST, REPLY, ERROR, STREAM_ITEM, STREAM_END, CANCEL, PUBLISH, PUBLISH_BATCH, CREDIT,
 FLOW_ITEM, FLOW_END) = range(1, 12)
ITEMS = {REQUEST: 6, REPLY: 4, ERROR: 6, STREAM_ITEM: 4, STREAM_END: 3, CANCEL: 3, PUBLISH: 6,
         PUBLISH_BATCH: 6, CREDIT: 4, FLOW_ITEM: 5, FLOW_END: 4}
ALLOWED_TAGS = frozenset({0, 1, 2, 3, 37, 258})
MAX_DEPTH = 64
MAX_FRAME = 64 * 2**20
BEACON_HEAD = b"ZKB\x01"
HELLO, GOODBYE = 1, 2
MAX_BEACON = 1200
LOOPBACK_BROADCAST = "127.255.255.255"
STREAM = "zmqkit.stream"
MAX_WINDOW = 10_000
CURVE_HEADER = "curve"
ZAP_DOMAIN = "foreign"  # the foreign servers' own (any name: ZAP domains are local)

WAIT = 5.0  # the most one step may take; they normally take milliseconds
FAST = {"interval": 0.2, "expiry": 3.0}


# -- section 2, as a strict reader -----------------------------------------------------------------


class _SixTags(Mapping[int, Any]):
    """cbor2 decodes well-known tags by itself: the six of section 2 go on to its own decoders
    (a KeyError here), every other tag it knows is refused."""

    def __getitem__(self, tag: int) -> Any:
        if tag in ALLOWED_TAGS:
            raise KeyError(tag)
        return _refuse

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse(*_: Any) -> NoReturn:
    raise ValueError("a CBOR tag outside the six of section 2")


def _walk(value: Any, depth: int) -> None:
    """Section 2's values: no simple values, at most 64 levels (a set is a tag and an array)."""
    kind = type(value)
    if kind in (int, float, str, bytes, bool, type(None)) or isinstance(value, uuid.UUID):
        return
    if hasattr(value, "isoformat"):  # tags 0 and 1
        return
    assert kind in (list, tuple, dict, set, frozenset) or isinstance(value, Mapping), value
    assert depth <= MAX_DEPTH, "nesting deeper than 64"
    if isinstance(value, Mapping):
        for key, item in value.items():
            _walk(key, depth + 1)
            _walk(item, depth + 1)
    else:
        for item in value:
            _walk(item, depth + (2 if kind in (set, frozenset) else 1))


def loads_one(data: bytes) -> Any:
    """One CBOR item that fills ``data``, with section 2's rules."""
    stream = io.BytesIO(data)
    value = cbor2.CBORDecoder(stream, semantic_decoders=_SixTags(), tag_hook=_refuse,
                              allow_duplicate_keys=False).decode()
    assert stream.tell() == len(data), "bytes after the item"
    _walk(value, 1)
    return value


def uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**64


def envelope(frame: bytes) -> list[Any]:
    """Section 3: one array, version 1, a known kind, its item count and field types."""
    message = loads_one(frame)
    assert type(message) is list and len(message) >= 3, message
    assert message[0] == VERSION and type(message[0]) is int, message
    kind = message[1]
    assert kind in ITEMS and len(message) == ITEMS[kind], message
    if kind in (PUBLISH, PUBLISH_BATCH):
        assert type(message[2]) is str and type(message[3]) is bytes and len(message[3]) == 16
        assert uint(message[4])
        assert kind == PUBLISH or (type(message[5]) is list and message[5])
        return message
    assert uint(message[2]), message
    if kind == REQUEST:
        assert type(message[3]) is str and type(message[4]) is list
        assert type(message[5]) is dict and all(type(key) is str for key in message[5])
    elif kind == ERROR:
        assert all(type(text) is str for text in message[3:]), message
    elif kind in (CREDIT, FLOW_ITEM, FLOW_END):
        assert uint(message[3]), message
    return message


def frame(*items: Any) -> bytes:
    return cbor2.dumps(list(items))


def heard(sub: zmq.Socket[Any], publish: Callable[[], object],
          accept: Callable[[list[Any]], bool], what: str) -> list[Any]:
    """Publish until ``sub`` receives a publication that ``accept`` takes (a subscription
    reaches a publisher some time after the connection: section 7.4's slow joiner)."""
    deadline = time.monotonic() + WAIT
    while True:
        assert time.monotonic() < deadline, f"not heard: {what}"
        publish()
        while sub.poll(20):
            message = envelope(sub.recv())
            if accept(message):
                return message


def prefixes(topic: str) -> tuple[bytes, bytes]:
    """Section 4."""
    return (bytes([0x86, VERSION, PUBLISH]) + cbor2.dumps(topic),
            bytes([0x86, VERSION, PUBLISH_BATCH]) + cbor2.dumps(topic))


# -- section 5: the beacon port, and foreign nodes on it -------------------------------------------


def beacon(kind: int, name: str, node_uuid: bytes, seq: int, endpoints: dict[str, str],
           headers: dict[str, str]) -> bytes:
    return BEACON_HEAD + cbor2.dumps([kind, name, node_uuid, seq, endpoints, headers])


def parse_beacon(datagram: bytes) -> list[Any]:
    assert len(datagram) <= MAX_BEACON and datagram[:4] == BEACON_HEAD
    body = loads_one(datagram[4:])
    assert type(body) is list
    if len(body) == 3:  # a peer list (section 5.1): not a beacon
        return []
    kind, name, node_uuid, seq, endpoints, headers = body
    assert kind in (1, 2, 3) and type(name) is str and 0 < len(name.encode()) <= 64
    assert type(node_uuid) is bytes and len(node_uuid) == 16 and uint(seq)
    for mapping in (endpoints, headers):
        assert all(type(k) is str and type(v) is str for k, v in mapping.items()), mapping
    return body


class Beacons:
    """The beacon port as section 5.2 says: bound with SO_REUSEADDR and SO_REUSEPORT, hearing
    every beacon of the host; ``find`` waits for a node of a name that serves a role."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.bind(("", port))
        self.heard: list[list[Any]] = []  # every body, in order

    def close(self) -> None:
        self.sock.close()

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, (LOOPBACK_BROADCAST, self.port))

    def wait(self, accept: Callable[[list[Any]], bool], timeout: float = WAIT) -> list[Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                datagram, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            body = parse_beacon(datagram)
            if body:
                self.heard.append(body)
                if accept(body):
                    return body
        raise AssertionError(f"no such beacon within {timeout} s")

    def find(self, name: str, role: str) -> list[Any]:
        """The latest HELLO of a node called ``name`` that advertises ``role`` (section 1)."""
        return self.wait(lambda body: body[0] == HELLO and body[1] == name and role in body[4])


class ForeignNode:
    """A node of the foreign implementation: a HELLO every 0.1 s, a GOODBYE on close."""

    def __init__(self, beacons: Beacons, name: str, keys: Keys | None = None) -> None:
        self.beacons = beacons
        self.name = name
        self.uuid = uuid.uuid4().bytes
        self.seq = 1
        self.endpoints: dict[str, str] = {}
        self.headers: dict[str, str] = {CURVE_HEADER: keys.public.decode()} if keys else {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"foreign-beacon:{name}")
        self._thread.start()

    def advertise(self, role: str, endpoint: str, **headers: str) -> None:
        with self._lock:
            self.endpoints[role] = endpoint
            self.headers.update(headers)
            self.seq += 1  # section 5.3: every change raises seq, and is announced at once
        self._send(HELLO)

    def _send(self, kind: int) -> None:
        with self._lock:
            datagram = beacon(kind, self.name, self.uuid, self.seq, dict(self.endpoints),
                              dict(self.headers))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            out.sendto(datagram, (LOOPBACK_BROADCAST, self.beacons.port))

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._send(HELLO)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._send(GOODBYE)


# -- section 8.1: keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    public: bytes
    secret: bytes

    @classmethod
    def new(cls) -> Keys:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


class _Ring:
    """The ZAP credentials check of a foreign server: only keys in its ring (section 8.1)."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys  # pyzmq hands the client's key over in Z85


class Foreign:
    """The foreign implementation's context: its sockets, its keys and ring (or none), its ZAP
    handler when it serves with keys. Every socket is made and closed by the thread using it."""

    def __init__(self, beacons: Beacons, keys: Keys | None, ring: set[bytes]) -> None:
        self.beacons = beacons
        self.keys = keys
        self.ring = ring
        self.context: zmq.Context[Any] = zmq.Context()
        self.auth: zmq.auth.thread.ThreadAuthenticator | None = None
        if keys is not None:
            self.auth = zmq.auth.thread.ThreadAuthenticator(self.context)
            self.auth.start()
            self.auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_Ring(ring))

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
        self.context.destroy(linger=0)

    def socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)  # section 8: at least this
        sock.rcvtimeo = sock.sndtimeo = int(WAIT * 1000)
        return sock

    def server(self, kind: int) -> tuple[zmq.Socket[Any], str]:
        """A bound socket: a CURVE server with this side's keys, if it has keys."""
        sock = self.socket(kind)
        if self.keys is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.keys.secret
            sock.curve_publickey = self.keys.public
            sock.zap_domain = ZAP_DOMAIN.encode()
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}"

    def client(self, kind: int, endpoint: str, headers: Mapping[str, str],
               routing_id: bytes | None = None) -> zmq.Socket[Any]:
        """A socket connected to a server that advertised ``endpoint`` with ``headers``: with
        keys, only to a server whose ``curve`` key is in the ring (section 8.1)."""
        server_key = headers.get(CURVE_HEADER)
        if self.keys is None:
            assert server_key is None, "a client without keys must not connect to a CURVE node"
        else:
            assert server_key is not None and server_key.encode() in self.ring, "untrusted"
        sock = self.socket(kind)
        if routing_id is not None:
            sock.routing_id = routing_id
        if self.keys is not None and server_key is not None:
            sock.curve_serverkey = server_key.encode()
            sock.curve_publickey = self.keys.public
            sock.curve_secretkey = self.keys.secret
        sock.connect(endpoint)
        return sock


# -- section 6: a caller, and a server ------------------------------------------------------------


class Caller:
    """A DEALER to one node's ``rpc`` endpoint: calls matched by call id, streams with credit."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.ids = itertools.count(1)  # section 6.3: never 0
        self.stray: list[list[Any]] = []  # answers to calls no longer waited for

    def send(self, *items: Any) -> None:
        self.sock.send(frame(*items))

    def recv(self) -> list[Any]:
        frames = self.sock.recv_multipart()
        assert len(frames) == 1, "one frame per answer"
        return envelope(frames[0])

    def answer(self, call_id: int) -> list[Any]:
        """The next answer to ``call_id``; others are kept aside (section 6.3)."""
        while (message := self.recv())[2] != call_id:
            self.stray.append(message)
        return message

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call_id = next(self.ids)
        self.send(VERSION, REQUEST, call_id, method, list(args), kwargs)
        message = self.answer(call_id)
        if message[1] == ERROR:
            raise RemoteFailure(*message[3:])
        assert message[1] == REPLY, message
        return message[3]

    def stream(self, method: str, *args: Any, window: int = 16, stop_after: int | None = None,
               **kwargs: Any) -> Iterator[Any]:
        """Section 6.7: credit half a window at a time, every index checked, the count too."""
        call_id = next(self.ids)
        self.send(VERSION, REQUEST, call_id, STREAM, [method, list(args), kwargs, window], {})
        limit, received = window, 0
        while True:
            message = self.answer(call_id)
            if message[1] == ERROR:
                raise RemoteFailure(*message[3:])
            if message[1] == FLOW_END:
                assert message[3] == received, "the count is the items sent"
                return
            assert message[1] == FLOW_ITEM and message[3] == received < limit, message
            received += 1
            yield message[4]
            if stop_after is not None and received == stop_after:
                self.send(VERSION, CANCEL, call_id)
                stop_after = None
            elif limit - received <= window // 2:
                limit = received + window
                self.send(VERSION, CREDIT, call_id, limit)


class RemoteFailure(Exception):
    """An ERROR answer: its type, message and traceback."""


@dataclass
class ForeignServer:
    """An RPC server of the foreign implementation (section 6), in a thread of its own.

    ``methods`` are plain functions; ``streams`` are generator functions, served to a
    ``zmqkit.stream`` request with flow control, and to a plain REQUEST the way ``plain_streams``
    says: ``"reply"`` (one REPLY of every item, as current servers do) or ``"older"`` (STREAM_ITEMs
    then a STREAM_END, as servers older than flow control do; ``zmqkit.stream`` is then unknown).
    ``misbehave`` breaks section 6.7 on purpose: ``"skip"`` an index, ``"count"`` a wrong
    count. ``jumble`` answers calls out of order, each after a stale answer (section 6.3).
    """

    foreign: Foreign
    methods: dict[str, Callable[..., Any]] = field(default_factory=dict)
    streams: dict[str, Callable[..., Iterator[Any]]] = field(default_factory=dict)
    plain_streams: str = "reply"
    misbehave: str = ""
    jumble: bool = False
    endpoint: str = ""
    received: list[list[Any]] = field(default_factory=list)  # every envelope, in order

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-rpc-server")
        self._thread.start()
        assert self._ready.wait(WAIT)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        router, self.endpoint = self.foreign.server(zmq.ROUTER)
        self._ready.set()
        flows: dict[tuple[bytes, int], dict[str, Any]] = {}
        self._held: list[list[bytes]] = []
        try:
            while not self._stop.is_set():
                for key, flow in list(flows.items()):
                    self._pump(router, key, flow, flows)
                if not router.poll(20):
                    while self._held:  # nothing more came: the answer held back goes now
                        router.send_multipart(self._held.pop())
                    continue
                identity, body = router.recv_multipart()
                message = envelope(body)
                self.received.append(message)
                self._take(router, identity, message, flows)
        finally:
            router.close(linger=0)

    def _take(self, router: zmq.Socket[Any], identity: bytes, message: list[Any],
              flows: dict[tuple[bytes, int], dict[str, Any]]) -> None:
        kind, call_id = message[1], message[2]

        def send(*items: Any) -> None:
            router.send_multipart([identity, frame(*items)])

        if kind in (CREDIT, CANCEL):
            flow = flows.get((identity, call_id))
            if flow is not None and kind == CREDIT:
                flow["limit"] = max(flow["limit"], message[3])
            elif flow is not None:
                flow["cancelled"] = True
            return
        method, args, kwargs = message[3], message[4], message[5]
        if method == STREAM and self.plain_streams != "older":
            method, args, kwargs, window = args
            if method in self.streams:
                flows[(identity, call_id)] = {"items": self.streams[method](*args, **kwargs),
                                              "sent": 0, "limit": window, "cancelled": False}
                return
            send(VERSION, ERROR, call_id, "zmqkit.MethodNotFound", f"no {method!r}", "")
        elif method in self.methods and self.jumble:
            send(VERSION, REPLY, call_id + 10**6, "stale")  # for a call nobody waits for
            answer = [identity, frame(VERSION, REPLY, call_id, self.methods[method](*args,
                                                                                **kwargs))]
            if self._held:  # this answer first, then the one held back: out of order
                router.send_multipart(answer)
                router.send_multipart(self._held.pop())
            else:
                self._held.append(answer)
        elif method in self.methods:
            send(VERSION, REPLY, call_id, self.methods[method](*args, **kwargs))
        elif method in self.streams and self.plain_streams == "older":
            for item in self.streams[method](*args, **kwargs):
                send(VERSION, STREAM_ITEM, call_id, item)
            send(VERSION, STREAM_END, call_id)
        elif method in self.streams:
            send(VERSION, REPLY, call_id, list(self.streams[method](*args, **kwargs)))
        else:
            send(VERSION, ERROR, call_id, "zmqkit.MethodNotFound", f"no {method!r}", "")

    def _pump(self, router: zmq.Socket[Any], key: tuple[bytes, int], flow: dict[str, Any],
              flows: dict[tuple[bytes, int], dict[str, Any]]) -> None:
        """Send what the credit allows (section 6.7), and the end."""
        identity, call_id = key
        while flow["sent"] < flow["limit"] and not flow["cancelled"]:
            try:
                item = next(flow["items"])
            except StopIteration:
                break
            index = flow["sent"] + (1 if self.misbehave == "skip" and flow["sent"] == 2 else 0)
            router.send_multipart([identity, frame(VERSION, FLOW_ITEM, call_id, index, item)])
            flow["sent"] += 1
        else:
            if not flow["cancelled"]:
                return  # waits for credit
        count = flow["sent"] + (1 if self.misbehave == "count" else 0)
        router.send_multipart([identity, frame(VERSION, FLOW_END, call_id, count)])
        del flows[key]


# -- fixtures --------------------------------------------------------------------------------------


@dataclass
class World:
    """One test's cast: the beacon port, the foreign side, and zmqkit nodes made to trust it."""

    port: int
    beacons: Beacons
    foreign: Foreign
    zmqkit_keys: zmqkit.Keypair | None
    stack: contextlib.ExitStack

    @property
    def secure(self) -> bool:
        return self.foreign.keys is not None

    def node(self, name: str) -> zmqkit.Node:
        """A zmqkit node: with keys, its ring holds the foreign key (and its own)."""
        security: dict[str, Any] = {}
        if self.zmqkit_keys is not None and self.foreign.keys is not None:
            ring = zmqkit.Keyring([self.foreign.keys.public.decode(), self.zmqkit_keys.public])
            security = {"keys": self.zmqkit_keys, "keyring": ring}
        return self.stack.enter_context(zmqkit.Node(name, port=self.port, **FAST, **security))

    def foreign_node(self, name: str) -> ForeignNode:
        node = ForeignNode(self.beacons, name, self.foreign.keys)
        self.stack.callback(node.close)
        return node

    def server(self, **options: Any) -> ForeignServer:
        server = ForeignServer(self.foreign, **options)
        self.stack.callback(server.close)
        return server

    def subscriber(self, body: list[Any], role: str, topic: str) -> zmq.Socket[Any]:
        """A foreign SUB to the ``role`` endpoint of the node whose beacon is ``body``,
        subscribed to ``topic`` (both prefixes of section 4)."""
        sub = self.foreign.client(zmq.SUB, body[4][role], body[5])
        self.stack.callback(sub.close, 0)
        for prefix in prefixes(topic):
            sub.subscribe(prefix)
        return sub

    def caller(self, name: str, role: str = "rpc") -> Caller:
        """A foreign caller to the zmqkit node ``name``, found by its beacon."""
        body = self.beacons.find(name, role)
        sock = self.foreign.client(zmq.DEALER, body[4][role], body[5])
        self.stack.callback(sock.close, 0)
        return Caller(sock)


def make_world(beacon_port: int, secure: bool) -> Iterator[World]:
    zmqkit_keys = zmqkit.Keypair.generate() if secure else None
    foreign_keys = Keys.new() if secure else None
    ring = {zmqkit_keys.public.encode()} if zmqkit_keys else set()
    beacons = Beacons(beacon_port)
    foreign = Foreign(beacons, foreign_keys, ring)
    with contextlib.ExitStack() as stack:
        try:
            yield World(beacon_port, beacons, foreign, zmqkit_keys, stack)
        finally:
            stack.close()  # zmqkit and foreign parts first, then their context
            foreign.close()
            beacons.close()


@pytest.fixture(params=["plain", "curve"])
def world(beacon_port: int, request: pytest.FixtureRequest) -> Iterator[World]:
    """Plaintext, then with CURVE keys on both sides."""
    yield from make_world(beacon_port, request.param == "curve")


@pytest.fixture
def plain(beacon_port: int) -> Iterator[World]:
    yield from make_world(beacon_port, False)


@pytest.fixture
def keyed(beacon_port: int) -> Iterator[World]:
    yield from make_world(beacon_port, True)


class Calc:
    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def count(self, n: int) -> Iterator[int]:
        yield from range(n)

    def fail_after(self, n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError(f"failed after {n}")


@pytest.fixture
def calc(plain: World) -> Caller:
    """A zmqkit ``calc`` node serving ``Calc``, and a foreign caller to it."""
    rpc.serve(plain.node("calc"), Calc())
    return plain.caller("calc")


# -- sections 2 and 3: what zmqkit refuses ---------------------------------------------------------


REFUSED = {
    "version-2": frame(2, REQUEST, 1, "add", [1, 2], {}),
    "kind-12": frame(VERSION, 12, 1, 2),
    "request-5-items": frame(VERSION, REQUEST, 1, "add", [1, 2]),
    "call-id-true": frame(VERSION, REQUEST, True, "add", [1, 2], {}),
    "call-id-bignum": frame(VERSION, REQUEST, 2**64, "add", [1, 2], {}),
    "method-bytes": frame(VERSION, REQUEST, 1, b"add", [1, 2], {}),
    "kwargs-int-key": frame(VERSION, REQUEST, 1, "add", [], {1: 2}),
    "tag-30": frame(VERSION, REQUEST, 1, "echo", [cbor2.CBORTag(30, [1, 3])], {}),
    "tag-99": frame(VERSION, REQUEST, 1, "echo", [cbor2.CBORTag(99, 1)], {}),
    "undefined": b"\x86\x01\x01\x01\x64echo\x81\xf7\xa0",
    "simple-0": b"\x86\x01\x01\x01\x64echo\x81\xe0\xa0",
    "simple-255": b"\x86\x01\x01\x01\x64echo\x81\xf8\xff\xa0",
    "repeated-key": b"\x86\x01\x01\x01\x64echo\x81\xa2\x61k\x01\x61k\x02\xa0",
    "repeated-int-key": b"\x86\x01\x01\x01\x64echo\x81\xa2\x01\x01\x01\x02\xa0",
    "repeated-kwarg": b"\x86\x01\x01\x01\x64echo\x80\xa2\x65value\x01\x65value\x02",
    "repeated-set-element": frame(VERSION, REQUEST, 1, "echo", [cbor2.CBORTag(258, [1, 1])], {}),
    # the message is level 1, args level 2, then arrays down to an empty one at level 65
    "empty-array-at-65": b"\x86\x01\x01\x01\x64echo\x81" + b"\x81" * 62 + b"\x80\xa0",
    "item-in-array-at-65": b"\x86\x01\x01\x01\x64echo\x81" + b"\x81" * 62 + b"\x81\x00\xa0",
    "not-an-array": cbor2.dumps({"v": 1}),
    "garbage": b"\xff\x00garbage",
}


@pytest.mark.parametrize("bad", list(REFUSED.values()), ids=list(REFUSED))
def test_a_server_refuses_what_sections_2_and_3_refuse(calc: Caller, bad: bytes) -> None:
    calc.sock.send(bad)
    answer = calc.recv()
    assert answer[1:4] == [ERROR, 0, "zmqkit.ProtocolError"], answer
    assert calc.call("add", 1, 2) == 3, "the server keeps serving"


def test_what_sections_2_and_3_allow_gets_through(calc: Caller) -> None:
    # the guards of the test above: each differs from an accepted frame in one place
    deepest = b"\x86\x01\x01\x07\x64echo\x81" + b"\x81" * 61 + b"\x80\xa0"  # empty array at 64
    calc.sock.send(deepest)
    assert calc.answer(7)[1] == REPLY
    calc.sock.send(frame(VERSION, REQUEST, 8, "echo", [cbor2.CBORTag(258, [1, 2])], {}))
    assert calc.answer(8)[3] == {1, 2}  # a set comes back
    assert calc.call("echo", {1: "a", 2: "b"}) == {1: "a", 2: "b"}
    assert calc.call("echo", {"a": None, "b": [True, False, 1.5]}) == {"a": None,
                                                                      "b": [True, False, 1.5]}


def test_a_server_answers_a_frame_that_is_not_a_request_by_section_6_5(calc: Caller) -> None:
    calc.send(VERSION, REPLY, 9, 5)
    assert calc.recv()[1:4] == [ERROR, 9, "zmqkit.ProtocolError"]
    calc.sock.send_multipart([frame(VERSION, REQUEST, 10, "add", [1, 2], {}), b"more"])
    assert calc.recv()[1:4] == [ERROR, 0, "zmqkit.ProtocolError"]
    for stray in (frame(VERSION, CANCEL, 11), frame(VERSION, CREDIT, 11, 100)):
        calc.sock.send(stray)  # no stream 11: no answer at all
    assert calc.call("add", 2, 2) == 4 and not calc.stray


def test_a_server_takes_a_frame_of_64_mib(calc: Caller) -> None:
    head = frame(VERSION, REQUEST, 12, "echo", [b""], {})  # ... 0x81 0x40 0xa0
    payload = b"\x07" * (MAX_FRAME - len(head) - 4)  # a byte string head of 5 bytes, not 1
    request = head[:-2] + b"\x5a" + len(payload).to_bytes(4, "big") + payload + b"\xa0"
    assert len(request) == MAX_FRAME
    calc.sock.send(request, copy=False)
    answer = calc.sock.recv(copy=True)
    assert answer[:4] == bytes([0x84, VERSION, REPLY, 12]) and answer[-len(payload):] == payload


# -- section 1: the life of an endpoint ------------------------------------------------------------


def test_a_caller_waits_for_the_role(plain: World) -> None:
    # a node of the name that serves nothing yet: callers wait, and call once the role appears
    svc = plain.foreign_node("svc")
    me = plain.node("me")
    wait_until(lambda: me.peers("svc"), WAIT, "the foreign node seen")
    with rpc.Client(me, "svc", timeout=0.5) as client, pytest.raises(zmqkit.PeerNotFound):
        client.add(1, 2)
    server = plain.server(methods={"add": lambda a, b: a + b})
    svc.advertise("rpc", server.endpoint)
    with rpc.Client(me, "svc", timeout=WAIT) as client:
        assert client.add(1, 2) == 3


def test_a_node_announces_its_endpoints_as_they_come_and_go(plain: World) -> None:
    node = zmqkit.Node("lifecycle", port=plain.port, **FAST)
    with node:
        first = plain.beacons.wait(lambda body: body[2] == node.uuid.bytes)
        server = rpc.serve(node, Calc())
        served = plain.beacons.wait(lambda body: body[2] == node.uuid.bytes and "rpc" in body[4])
        assert served[3] > first[3], "a change raises seq (section 5.3)"
        server.close()
        withdrawn = plain.beacons.wait(
            lambda body: body[2] == node.uuid.bytes and "rpc" not in body[4] and body[0] == HELLO
            and body[3] > served[3])
    goodbye = plain.beacons.wait(lambda body: body[2] == node.uuid.bytes and body[0] == GOODBYE)
    assert "rpc" not in goodbye[4] and goodbye[3] >= withdrawn[3]


# -- sections 2 to 5: every frame zmqkit sends -----------------------------------------------------


def test_every_frame_zmqkit_sends_is_one_valid_item(plain: World) -> None:
    node = plain.node("sender")
    rpc.serve(node, Calc())
    publisher = pubsub.Publisher(node)
    caller = plain.caller("sender")
    frames: list[bytes] = []
    caller.send(VERSION, REQUEST, 1, "add", [1, 2], {})
    caller.send(VERSION, REQUEST, 2, "nope", [], {})
    caller.send(VERSION, REQUEST, 3, "count", [3], {})
    caller.send(VERSION, REQUEST, 4, STREAM, ["count", [3], {}, 8], {})
    caller.send(VERSION, REQUEST, 5, "echo", [{"set": cbor2.CBORTag(258, [1, 2]), "n": None}], {})
    while len(frames) < 8:
        frames.append(caller.sock.recv())
    sub = plain.foreign.client(zmq.SUB, plain.beacons.find("sender", "pub")[4]["pub"], {})
    try:
        for prefix in prefixes("news"):
            sub.subscribe(prefix)
        deadline = time.monotonic() + WAIT
        while len(frames) < 9 and time.monotonic() < deadline:
            publisher.publish("news", {"px": 101.25})
            if sub.poll(20):
                frames.append(sub.recv())
        for i in range(200):  # quickly: some go out as PUBLISH_BATCH
            publisher.publish("news", i)
        while sub.poll(300):
            frames.append(sub.recv())
    finally:
        sub.close(linger=0)
    kinds = set()
    for data in frames:
        message = envelope(data)
        kinds.add(message[1])
        if message[1] in (PUBLISH, PUBLISH_BATCH):
            assert data.startswith(prefixes(message[2])[message[1] - PUBLISH]), "section 4"
    assert {REPLY, ERROR, FLOW_ITEM, FLOW_END, PUBLISH} <= kinds  # and maybe PUBLISH_BATCH
    bodies = [body for body in plain.beacons.heard if body[1] == "sender"]
    seqs = [body[3] for body in bodies]
    assert seqs == sorted(seqs), "seq never goes down"
    for earlier, later in itertools.pairwise(bodies):  # same seq, same content (section 5.3)
        if earlier[3] == later[3] and earlier[0] == later[0] == HELLO:
            assert earlier[1:] == later[1:]


BAD_BEACONS = {
    "bytes-after": lambda b: b + b"\x00",
    "version-2": lambda b: b[:3] + b"\x02" + b[4:],
    "over-1200": lambda b: b[:-1] + cbor2.dumps({"pad": "x" * 1200}),
    "undefined-header": lambda b: b[:-1] + b"\xa1\x61h\xf7",
    "repeated-header": lambda b: b[:-1] + b"\xa2\x61h\x61a\x61h\x61b",
}


@pytest.mark.parametrize("spoil", list(BAD_BEACONS.values()), ids=list(BAD_BEACONS))
def test_a_node_drops_a_beacon_that_breaks_sections_2_and_5(
    plain: World, spoil: Callable[[bytes], bytes]
) -> None:
    me = plain.node("me")
    bad, good = uuid.uuid4().bytes, uuid.uuid4().bytes
    plain.beacons.send(spoil(beacon(HELLO, "bad", bad, 1, {}, {})))
    plain.beacons.send(beacon(HELLO, "good", good, 1, {}, {}))  # the guard: this one counts
    wait_until(lambda: me.peers("good"), WAIT, "the good beacon taken")
    time.sleep(0.1)
    assert not me.peers("bad")


# -- section 6: calls -------------------------------------------------------------------------


def test_a_caller_matches_answers_by_call_id(plain: World) -> None:
    # a server that answers out of order, and with stale answers first: zmqkit's callers match
    # by call id (section 6.3) and drop the rest
    server = plain.server(methods={"echo": lambda value: value}, jumble=True)
    node = plain.foreign_node("jumbled")
    node.advertise("rpc", server.endpoint)
    me = plain.node("me")

    async def main() -> list[Any]:
        async with rpc.AsyncClient(me, "jumbled", timeout=WAIT) as client:
            assert await client.echo(0) == 0
            futures = [client.submit("echo", i) for i in range(1, 50)]
            return [await future for future in futures]

    import asyncio

    assert asyncio.run(main()) == list(range(1, 50))
    with rpc.Client(me, "jumbled", timeout=WAIT) as client:
        assert [client.echo(i) for i in range(5)] == list(range(5))
    assert all(message[2] != 0 for message in server.received), "callers never use call id 0"


def test_call_id_0(calc: Caller) -> None:
    calc.send(VERSION, REQUEST, 0, "add", [20, 22], {})
    assert calc.recv() == [VERSION, REPLY, 0, 42], "served like any other call"
    calc.sock.send(b"\x86\x01\x01")  # unreadable: an ERROR with call id 0
    assert calc.recv()[1:4] == [ERROR, 0, "zmqkit.ProtocolError"]


def test_a_caller_accepts_either_form_of_answer(plain: World) -> None:
    for form in ("older", "reply"):
        server = plain.server(streams={"count": lambda n: iter(range(n))}, plain_streams=form)
        node = plain.foreign_node(f"counter-{form}")
        node.advertise("rpc", server.endpoint)
        me = plain.node(f"me-{form}")
        with rpc.Client(me, f"counter-{form}", timeout=WAIT) as client:
            assert client.count(5) == [0, 1, 2, 3, 4]


def test_a_server_answers_a_plain_request_for_a_stream_with_one_reply(calc: Caller) -> None:
    assert calc.call("count", 1000) == list(range(1000))
    with pytest.raises(RemoteFailure) as failed:
        calc.call("fail_after", 2)
    assert failed.value.args[0] == "ValueError"


# -- section 6.7: streams ---------------------------------------------------------------------


def test_a_server_never_sends_beyond_its_credit(calc: Caller) -> None:
    calc.send(VERSION, REQUEST, 20, STREAM, ["count", [10], {}, 3], {})
    assert [calc.recv() for _ in range(3)] == [[VERSION, FLOW_ITEM, 20, i, i] for i in range(3)]
    assert not calc.sock.poll(300), "an item beyond the window"
    calc.send(VERSION, CREDIT, 20, 2)  # below the limit: changes nothing
    assert not calc.sock.poll(300)
    calc.send(VERSION, CREDIT, 20, 5)
    assert [calc.recv() for _ in range(2)] == [[VERSION, FLOW_ITEM, 20, i, i] for i in (3, 4)]
    assert not calc.sock.poll(300), "an item beyond the limit"
    calc.send(VERSION, CREDIT, 20, 10)  # exactly the rest: the end needs no credit
    assert [calc.recv() for _ in range(5)] == [[VERSION, FLOW_ITEM, 20, i, i] for i in range(5, 10)]
    assert calc.recv() == [VERSION, FLOW_END, 20, 10]


def test_a_cancel_ends_a_stream_within_a_window(calc: Caller) -> None:
    items = list(calc.stream("count", 10**6, window=32, stop_after=10))
    assert items == list(range(len(items))) and 10 <= len(items) <= 10 + 32
    assert calc.call("add", 1, 1) == 2 and not calc.stray


def test_a_stream_that_fails_part_way_ends_with_an_error_after_its_items(calc: Caller) -> None:
    received = []
    with pytest.raises(RemoteFailure) as failed:
        for item in calc.stream("fail_after", 3, window=2):
            received.append(item)
    assert received == [0, 1, 2] and failed.value.args[0] == "ValueError"


OPENING_ERRORS = {
    "window-0": (["count", [3], {}, 0], "zmqkit.BadArguments"),
    "window-over-10000": (["count", [3], {}, MAX_WINDOW + 1], "zmqkit.BadArguments"),
    "three-items": (["count", [3], {}], "zmqkit.BadArguments"),
    "unknown": (["nope", [], {}, 8], "zmqkit.MethodNotFound"),
    "not-a-stream": (["add", [1, 2], {}, 8], "zmqkit.NotAStream"),
}


@pytest.mark.parametrize(("args", "error"), list(OPENING_ERRORS.values()), ids=list(OPENING_ERRORS))
def test_a_stream_that_cannot_open_gets_one_error(calc: Caller, args: list[Any],
                                                  error: str) -> None:
    calc.send(VERSION, REQUEST, 30, STREAM, args, {})
    assert calc.recv()[1:4] == [ERROR, 30, error]
    assert not calc.sock.poll(200)


def test_a_zmqkit_stream_follows_section_6_7_against_a_foreign_server(world: World) -> None:
    server = world.server(streams={"count": lambda n: iter(range(n))})
    node = world.foreign_node("counter")
    node.advertise("rpc", server.endpoint)
    me = world.node("me")
    with rpc.Client(me, "counter", timeout=WAIT) as client:
        assert list(client.stream("count", 2000)) == list(range(2000))
    credits = [message for message in server.received if message[1] == CREDIT]
    assert credits and all(m[3] <= 2000 + 256 for m in credits), "credit half a window at a time"


@pytest.mark.parametrize("misbehave", ["skip", "count"])
def test_a_caller_ends_a_broken_stream(plain: World, misbehave: str) -> None:
    # (an item beyond the credit is a race over sockets: tests/test_rpc_core.py feeds one)
    server = plain.server(streams={"count": lambda n: iter(range(n))}, misbehave=misbehave)
    node = plain.foreign_node("broken")
    node.advertise("rpc", server.endpoint)
    me = plain.node("me")
    with rpc.Client(me, "broken", timeout=WAIT) as client, pytest.raises(zmqkit.BrokenError):
        list(client.stream("count", 10))


def test_a_caller_falls_back_for_an_older_server(plain: World) -> None:
    server = plain.server(streams={"count": lambda n: iter(range(n))}, plain_streams="older")
    node = plain.foreign_node("older")
    node.advertise("rpc", server.endpoint)
    me = plain.node("me")
    with rpc.Client(me, "older", timeout=WAIT) as client:
        assert list(client.stream("count", 600)) == list(range(600))
    kinds = [message[1] for message in server.received]
    assert CREDIT not in kinds, "no CREDIT to a stream that did not open with flow control"
    assert [m[3] for m in server.received if m[1] == REQUEST] == [STREAM, "count"]


# -- section 7: publish/subscribe ------------------------------------------------------------------


def test_a_subscriber_drops_what_is_not_a_valid_publication(plain: World) -> None:
    pub, endpoint = plain.foreign.server(zmq.PUB)
    try:
        node = plain.foreign_node("raw")
        node.advertise("pub", endpoint)
        sender = node.uuid
        with pubsub.Subscriber(plain.node("screen"), "t") as subscriber:
            subscriber.wait_for_publishers(timeout=WAIT)
            bad = [
                prefixes("t")[0] + b"\x50" + sender + b"\x01\xf7",  # undefined data
                prefixes("t")[0] + b"\x50" + sender + b"\x01\xa2\x01\x00\x01\x01",  # a key twice
                prefixes("t")[0] + b"\x4f" + sender[:15] + b"\x01\x00",  # a 15-byte sender
                prefixes("t")[1] + b"\x50" + sender + b"\x01\x80",  # an empty batch
                prefixes("t")[0] + b"\x50" + sender + b"\x01" + b"\x81" * 63 + b"\x80",  # 65
            ]
            seq = itertools.count(1)
            deadline = time.monotonic() + WAIT
            received: list[Any] = []
            while not received and time.monotonic() < deadline:  # the subscription is through
                pub.send(frame(VERSION, PUBLISH, "t", sender, next(seq), "warm"))
                with contextlib.suppress(zmqkit.Timeout):
                    received.append(subscriber.recv(0.02).data)
            for data in bad:
                pub.send(data)
            pub.send(frame(VERSION, PUBLISH, "t", sender, next(seq), "after"))
            while "after" not in received:
                received.append(subscriber.recv(WAIT).data)
            assert set(received) <= {"warm", "after"}
            assert subscriber.stats()["dropped-malformed"] == len(bad)
    finally:
        pub.close(linger=0)


# -- section 8.1: CURVE ----------------------------------------------------------------------------


def test_curve_refuses_a_stranger_and_a_plaintext_client(keyed: World) -> None:
    world = keyed
    rpc.serve(world.node("vault"), Calc())
    body = world.beacons.find("vault", "rpc")
    assert len(body[5][CURVE_HEADER]) == 40, "the key, in Z85"
    trusted = Caller(world.foreign.client(zmq.DEALER, body[4]["rpc"], body[5]))
    stranger = Keys.new()
    intruders = {"stranger": world.foreign.socket(zmq.DEALER),
                 "plaintext": world.foreign.socket(zmq.DEALER)}
    intruders["stranger"].curve_serverkey = body[5][CURVE_HEADER].encode()
    intruders["stranger"].curve_publickey = stranger.public
    intruders["stranger"].curve_secretkey = stranger.secret
    try:
        for sock in intruders.values():
            sock.connect(body[4]["rpc"])
            sock.send(frame(VERSION, REQUEST, 1, "add", [1, 2], {}))
        assert trusted.call("add", 1, 2) == 3
        for name, sock in intruders.items():
            assert not sock.poll(500), f"the {name} got an answer"
        assert trusted.call("add", 2, 2) == 4, "the server keeps serving its keyring"
    finally:
        trusted.sock.close(linger=0)
        for sock in intruders.values():
            sock.close(linger=0)


def test_curve_a_zmqkit_client_connects_only_to_a_trusted_key(keyed: World) -> None:
    world = keyed
    stranger_side = Foreign(world.beacons, Keys.new(), set())
    try:
        server = ForeignServer(stranger_side, methods={"add": lambda a, b: a + b})
        try:
            node = ForeignNode(world.beacons, "untrusted", stranger_side.keys)
            try:
                node.advertise("rpc", server.endpoint)
                me = world.node("me")
                wait_until(lambda: me.peers("untrusted"), WAIT, "the node seen")
                with rpc.Client(me, "untrusted", timeout=1.0) as client, pytest.raises(
                        zmqkit.SecurityError):
                    client.add(1, 2)
                assert not server.received, "nothing crossed"
            finally:
                node.close()
        finally:
            server.close()
    finally:
        stranger_side.close()


# -- the foreign client with every pattern, plaintext and with CURVE -------------------------------


def test_interop_rpc(world: World) -> None:
    rpc.serve(world.node("calc"), Calc())
    caller = world.caller("calc")
    assert caller.call("add", 2, 3) == 5
    assert list(caller.stream("count", 100, window=8)) == list(range(100))
    server = world.server(methods={"mul": lambda a, b: a * b},
                          streams={"count": lambda n: iter(range(n))})
    node = world.foreign_node("foreign-calc")
    node.advertise("rpc", server.endpoint)
    me = world.node("me")
    with rpc.Client(me, "foreign-calc", timeout=WAIT) as client:
        assert client.mul(6, 7) == 42
        assert list(client.stream("count", 700)) == list(range(700))


def test_interop_pubsub(world: World) -> None:
    node = world.node("ticker")
    publisher = pubsub.Publisher(node)
    sub = world.subscriber(world.beacons.find("ticker", "pub"), "pub", "news")
    pub, endpoint = world.foreign.server(zmq.PUB)
    try:
        first = heard(sub, lambda: (publisher.publish("newsletter", "not for us"),
                                    publisher.publish("news", {"px": 1})), lambda m: True, "news")
        assert first[2] == "news" and first[3] == node.uuid.bytes, "exact topics only"
        foreign = world.foreign_node("foreign-ticker")
        foreign.advertise("pub", endpoint)
        with pubsub.Subscriber(world.node("screen"), "news") as subscriber:
            subscriber.wait_for_publishers(count=2, timeout=WAIT)
            seq = itertools.count(1)
            deadline = time.monotonic() + WAIT
            while True:
                assert time.monotonic() < deadline, "nothing from the foreign publisher"
                pub.send(frame(VERSION, PUBLISH, "news", foreign.uuid, next(seq), "hello"))
                with contextlib.suppress(zmqkit.Timeout):
                    message = subscriber.recv(0.05)
                    if message.publisher == "foreign-ticker":
                        break
            assert message.data == "hello" and message.topic == "news"
            pub.send(frame(VERSION, PUBLISH_BATCH, "news", foreign.uuid, next(seq) + 100,
                           ["b1", "b2"]))
            batch = [subscriber.recv(WAIT) for _ in range(2)]
            assert [m.data for m in batch] == ["b1", "b2"] and batch[1].seq == batch[0].seq + 1
    finally:
        pub.close(linger=0)


def test_interop_survey(world: World) -> None:
    servers = [world.server(methods={"read": (lambda v: lambda: v)(value)}) for value in (1, 2)]
    for server in servers:
        world.foreign_node("sensor").advertise("rpc", server.endpoint)
    sensors = [world.node("sensor") for _ in range(2)]
    for value, sensor in zip((3, 4), sensors, strict=True):
        rpc.serve(sensor, {"read": (lambda v: lambda: v)(value)})
    me = world.node("me")
    wait_until(lambda: len([p for p in me.peers("sensor") if "rpc" in p.endpoints]) == 4, WAIT,
               "four sensors")
    result = survey.ask(me, "sensor", "read", timeout=WAIT)
    assert sorted(result.answers.values()) == [1, 2, 3, 4]
    # a foreign survey (section 9.4) of the zmqkit sensors: one REQUEST to each
    answers = []
    for sensor in sensors:
        body = world.beacons.wait(lambda b, u=sensor.uuid.bytes: b[2] == u and "rpc" in b[4])
        caller = Caller(world.foreign.client(zmq.DEALER, body[4]["rpc"], body[5]))
        try:
            answers.append(caller.call("read"))
        finally:
            caller.sock.close(linger=0)
    assert sorted(answers) == [3, 4]


def test_interop_farm(world: World) -> None:
    # a foreign worker (section 9.1) serves a zmqkit submitter
    me = world.node("boss")
    with farm.Submitter(me, "squares") as squares:
        body = world.beacons.find("boss", "farm:squares")
        worker_node = world.foreign_node("helper")
        worker = world.foreign.client(zmq.DEALER, body[4]["farm:squares"], body[5],
                                      routing_id=b"W" + worker_node.uuid + (1).to_bytes(4, "big"))
        try:
            worker.send(frame(VERSION, REQUEST, 1, "zmqkit.farm.ready", [1, 0, []], {}))
            task_id = squares.submit(7)
            task = envelope(worker.recv())
            assert task[1] == REQUEST and task[3] == "zmqkit.farm.task" and task[4][1] == 7
            worker.send(frame(VERSION, REPLY, task[2], 49))
            assert squares.result(task_id, timeout=WAIT) == 49
        finally:
            worker.close(linger=0)
    # a foreign submitter feeds a zmqkit worker
    router, endpoint = world.foreign.server(zmq.ROUTER)
    try:
        boss = world.foreign_node("foreign-boss")
        boss.advertise("farm:cubes", endpoint)
        with farm.Worker(world.node("hand"), lambda x: x**3, farm="cubes", slots=1):
            identity, ready = router.recv_multipart()
            message = envelope(ready)
            assert message[3] == "zmqkit.farm.ready" and message[4][0] >= 1
            router.send_multipart([identity, frame(VERSION, REQUEST, 5, "zmqkit.farm.task",
                                                   [1, 3], {})])
            while (answer := envelope(router.recv_multipart()[1]))[1] == REQUEST:
                pass  # more READYs
            assert answer == [VERSION, REPLY, 5, 27]
    finally:
        router.close(linger=0)


def test_interop_state(world: World) -> None:
    replica = state.State(world.node("inv"), "inv", heartbeat=0.2)
    world.stack.callback(replica.close)
    replica.wait_synced(WAIT)
    replica.set("apples", 12)
    body = world.beacons.find("inv", "state:inv")
    caller = Caller(world.foreign.client(zmq.DEALER, body[4]["state:inv"], body[5]))
    world.stack.callback(caller.sock.close, 0)
    answer = caller.call("zmqkit.state.sync", "inv", [])
    entries = answer["entries"]  # [writer_id, seq, code, key, stamp, value, expires_at]
    assert [[entry[2], entry[3], entry[5]] for entry in entries] == [[1, "apples", 12]]
    assert entries[0][1] >= 1 and answer["writers"] == [[entries[0][0], entries[0][1]]]
    sub = world.subscriber(body, "state-pub:inv", "zmqkit.state.inv")
    data = heard(sub, lambda: replica.set("pears", 3),
                 lambda m: m[5][0] == 1 and any(op[1] == "pears" for op in m[5][2]),
                 "an UPDATES with pears")[5]
    assert data[1] - len(data[2]) + 1 >= 1, "writer numbers from 1 (9.2)"


def test_interop_groups(world: World) -> None:
    node = world.node("alice")
    with groups.Groups(node) as alice:
        alice.join("ops")
        body = world.beacons.wait(lambda b: b[1] == "alice" and "groups" in b[4]
                                  and "ops" in b[5].get("groups", ""))
        caller = Caller(world.foreign.client(zmq.DEALER, body[4]["groups"], body[5]))
        world.stack.callback(caller.sock.close, 0)
        foreign = world.foreign_node("bob")
        assert caller.call("zmqkit.groups.whisper", foreign.uuid, "bob", "good luck") is None
        event = alice.recv(WAIT)
        while event.kind is not groups.GroupEventKind.WHISPER:
            event = alice.recv(WAIT)
        assert (event.peer, event.body) == ("bob", "good luck")
        sub = world.subscriber(body, "groups-pub", "zmqkit.group.ops")
        message = heard(sub, lambda: alice.shout("ops", "deploying v2"), lambda m: True, "a shout")
        items = [message[5]] if message[1] == PUBLISH else message[5]
        assert items[0] == ["alice", "deploying v2"]
