"""CURVE security: key files, keyrings, who may call and subscribe, what a spoofed beacon can do.

The cast of every test: a server (or publisher) with keypair ``server`` that admits ``client``;
a client with keypair ``client`` that trusts ``server``; a ``stranger`` with keys of its own that
trusts the server but is not in its ring; a plain node with no keys at all. Keys are generated in
memory (``Keypair.generate``) except where the files themselves are under test.

An attacker on the network is played by hand-made beacons (``SpoofedBeacon``: any name, any
endpoint, any key header) and by ``Relay``, a TCP relay that records and may alter every byte it
forwards. What the tests show, and docs/security.md says: a spoofed beacon can list a fake peer
and make a node connect where the attacker wants, but without the server's secret key nobody
completes a CURVE handshake as that server, and a relay on the path reads nothing and cannot
alter a message unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import selectors
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.utils.monitor
from conftest import wait_until
from zmqkit.patterns import pubsub, rpc

from zmqkit import ConfigError, Node, Socket, Timeout, codec
from zmqkit.codec import BeaconKind
from zmqkit.security import CURVE_HEADER, Keypair, Keyring, SecurityError
from zmqkit.zap import ZapHandler

FAST = {"interval": 0.2, "expiry": 0.6}
SLACK = 0.5  # how far past its deadline a failing call may return on a loaded test host
REPO = Path(__file__).resolve().parent.parent
MARKER = "confidential-4f7c2a"  # a value whose bytes must never be seen on the wire under CURVE
MakeNode = Callable[..., Node]


class Service:
    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, x: Any) -> Any:
        return x

    async def aecho(self, x: Any) -> Any:
        return x


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, Keypair]:
    return {who: Keypair.generate() for who in ("server", "client", "stranger", "attacker")}


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    """Start nodes on the test's private beacon port; every one is closed after the test."""
    nodes: list[Node] = []

    def make(name: str, **options: Any) -> Node:
        node = Node(name, port=beacon_port, **{**FAST, **options})
        nodes.append(node)
        return node.start()

    yield make
    for node in reversed(nodes):
        node.close()


@pytest.fixture
def server(make_node: MakeNode, keys: dict[str, Keypair]) -> rpc.Server:
    """A CURVE RPC server called "calc" that admits only the client."""
    node = make_node("calc", keys=keys["server"], keyring=[keys["client"].public])
    return rpc.serve(node, Service())


@pytest.fixture
def client_node(make_node: MakeNode, keys: dict[str, Keypair], server: rpc.Server) -> Node:
    node = make_node("app", keys=keys["client"], keyring=[keys["server"].public])
    wait_serving(node, "calc")
    return node


@pytest.fixture
def stranger_node(make_node: MakeNode, keys: dict[str, Keypair], server: rpc.Server) -> Node:
    """Keys of its own, not in the server's ring; it trusts the server's key."""
    node = make_node("stranger", keys=keys["stranger"], keyring=[keys["server"].public])
    wait_serving(node, "calc")
    return node


@pytest.fixture
def plain_node(make_node: MakeNode, server: rpc.Server) -> Node:
    node = make_node("plain")
    wait_serving(node, "calc")
    return node



def wait_serving(node: Node, name: str, timeout: float = 5.0) -> None:
    wait_until(lambda: any("rpc" in p.endpoints for p in node.peers(name)), timeout,
               f"{name!r} serving RPC")


@contextlib.contextmanager
def took(at_most: float) -> Iterator[None]:
    """Fail if the block takes longer than ``at_most`` seconds (whether or not it raises)."""
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        assert elapsed <= at_most, f"took {elapsed:.2f} s, more than {at_most} s"


def zap_stats() -> dict[str, int]:
    handler = ZapHandler._instance
    return dict(handler.stats) if handler is not None else {}


class SpoofedBeacon:
    """Hand-made HELLOs on the loopback broadcast, every 0.1 s, from a thread joined on close.

    Anyone who can reach the beacon port can send these: any name, any UUID, any endpoints and
    any ``curve`` header. That is the attacker of these tests.
    """

    def __init__(self, port: int, name: str, endpoints: Mapping[str, str],
                 headers: Mapping[str, str] | None = None, *, node_uuid: uuid.UUID | None = None,
                 seq: int = 1) -> None:
        self.datagram = codec.encode_beacon(BeaconKind.HELLO, name, node_uuid or uuid.uuid4(), seq,
                                            endpoints, headers or {})
        self.port = port
        self.sent = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self._thread = threading.Thread(target=self._run, name="spoofed-beacon", daemon=True)

    def __enter__(self) -> SpoofedBeacon:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sock.sendto(self.datagram, ("127.255.255.255", self.port))
            self.sent += 1
            self._stop.wait(0.1)


class Relay:
    """A TCP relay on loopback that forwards to ``target`` and records every byte it sees.

    It plays an attacker on the path (a spoofed beacon sends nodes to it). ``rewrite`` replaces
    bytes in what it forwards; ``flip`` (set once a handshake is done) flips one bit in the
    middle of every chunk from the caller to the server.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        self.target = (host, int(port))
        self.seen = bytearray()
        self.rewrite: tuple[bytes, bytes] | None = None
        self.flip = False
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        # each socket -> (the other end, whether this one is the caller's side)
        self._pairs: dict[socket.socket, tuple[socket.socket, bool]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for sock in [self._listener, *self._pairs]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._pairs:
                    self._forward(sock)

    def _accept(self) -> None:
        caller, _ = self._listener.accept()
        server = socket.create_connection(self.target, timeout=2.0)
        self.connections += 1
        self._pairs[caller] = (server, True)
        self._pairs[server] = (caller, False)
        for sock in (caller, server):
            self._selector.register(sock, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        other, upstream = self._pairs[sock]
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        if chunk:
            self.seen += chunk
            if self.rewrite is not None:
                chunk = chunk.replace(*self.rewrite)
            if self.flip and upstream:
                middle = len(chunk) // 2
                chunk = chunk[:middle] + bytes([chunk[middle] ^ 0x20]) + chunk[middle + 1:]
            with contextlib.suppress(OSError):
                other.sendall(chunk)
                return
        for end in (sock, other):  # one side closed (or the send failed): close both
            self._selector.unregister(end)
            self._pairs.pop(end)
            end.close()


def zmqkit_command(*args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmqkit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


# -- key files and keyrings -------------------------------------------------------------------


def test_keys_new_writes_a_public_and_a_0600_secret_file_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    base = tmp_path / "alice"
    made = zmqkit_command("keys", "new", str(base))
    assert made.returncode == 0, made.stderr
    public_file, secret_file = tmp_path / "alice.pub", tmp_path / "alice.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public = public_file.read_text()
    assert public.endswith("\n") and len(public.strip()) == 40 and "\n" not in public.strip()
    lines = secret_file.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["public", "secret"]
    assert lines[0].split()[1] == public.strip()
    keypair = Keypair.load(base)
    assert keypair.public == public.strip()
    assert Keypair.load(secret_file) == keypair  # the path may name the file itself
    assert keypair.secret not in repr(keypair)  # a printed keypair never shows its secret

    before = (public_file.read_bytes(), secret_file.read_bytes())
    again = zmqkit_command("keys", "new", str(base))
    assert again.returncode != 0
    assert "alice" in again.stderr and "exists" in again.stderr.lower()
    assert (public_file.read_bytes(), secret_file.read_bytes()) == before


def test_keys_new_beside_a_lone_public_file_writes_nothing(tmp_path: Path) -> None:
    # a new secret beside an old public key would be a pair that does not match
    (tmp_path / "bob.pub").write_text(Keypair.generate().public + "\n")
    with pytest.raises(ConfigError, match="cannot write"):
        Keypair.generate().save(tmp_path / "bob")
    assert not (tmp_path / "bob.secret").exists()
    (tmp_path / "carol.secret").write_text("taken\n")
    with pytest.raises(ConfigError, match="cannot write"):
        Keypair.generate().save(tmp_path / "carol")
    assert not (tmp_path / "carol.pub").exists()  # all or nothing
    assert (tmp_path / "carol.secret").read_text() == "taken\n"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_keypair_load_refuses_a_secret_file_others_can_read(tmp_path: Path, mode: int) -> None:
    Keypair.generate().save(tmp_path / "k")
    os.chmod(tmp_path / "k.secret", mode)
    with pytest.raises(ConfigError, match="readable by others"):
        Keypair.load(tmp_path / "k")


def test_keypair_load_refuses_mismatched_malformed_and_missing_keys(tmp_path: Path) -> None:
    mine, other = Keypair.generate(), Keypair.generate()

    def secret_file(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.secret"
        path.write_text(text)
        path.chmod(0o600)
        return path

    mismatched = secret_file("mixed", f"public {other.public}\nsecret {mine.secret}\n")
    with pytest.raises(ConfigError, match="does not belong"):
        Keypair.load(mismatched)
    with pytest.raises(ConfigError, match="40 characters"):
        Keypair.load(secret_file("short", f"public {mine.public}\nsecret abc\n"))
    with pytest.raises(ConfigError, match="Z85"):
        Keypair.load(secret_file("notz85", f"public {mine.public}\nsecret {'~' * 40}\n"))
    with pytest.raises(ConfigError, match="lacks"):
        Keypair.load(secret_file("nopublic", f"secret {mine.secret}\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        Keypair.load(tmp_path / "nobody")


def test_keyring_loads_a_directory_a_file_or_a_list_and_refuses_bad_keys(tmp_path: Path) -> None:
    a, b = Keypair.generate(), Keypair.generate()
    ring_dir = tmp_path / "ring"
    ring_dir.mkdir()
    (ring_dir / "a.pub").write_text(a.public + "\n")
    (ring_dir / "b.pub").write_text(b.public)
    (ring_dir / "notes.txt").write_text("not a key, and not read")
    ring = Keyring.load(ring_dir)
    assert len(ring) == 2 and a.public in ring and b.public in ring
    assert a.secret not in ring
    assert Keyring.load(ring_dir / "a.pub").keys == {a.public}
    assert Keyring.load([a.public]).keys == {a.public}
    (ring_dir / "bad.pub").write_text("too short")
    with pytest.raises(ConfigError):
        Keyring.load(ring_dir)
    with pytest.raises(ConfigError):
        Node("x", keys=a)  # keys without a keyring
    with pytest.raises(ConfigError):
        Node("x", keyring=[a.public])  # a keyring without keys


# -- who may call a CURVE server ----------------------------------------------------------------


def test_curve_server_advertises_its_public_key_in_its_beacon(
    client_node: Node, keys: dict[str, Keypair]
) -> None:
    [peer] = client_node.peers("calc")
    assert peer.headers[CURVE_HEADER] == keys["server"].public
    assert keys["server"].secret not in str(peer)


def test_curve_allowed_client_calls_sync_and_async(client_node: Node) -> None:
    with rpc.Client(client_node, "calc", timeout=3) as client:
        assert client.add(1, 2) == 3
        assert client.echo({"k": b"\x00\xff"}) == {"k": b"\x00\xff"}

    async def main() -> None:
        async with rpc.AsyncClient(client_node, "calc", timeout=3) as client:
            assert await client.add(2, 3) == 5
            assert await client.aecho("x") == "x"
            assert await asyncio.gather(*(client.add(i, i) for i in range(50))) == [
                2 * i for i in range(50)
            ]

    asyncio.run(main())
    assert zap_stats().get("admitted", 0) >= 2  # the sync and the async client's connections


def test_curve_stranger_times_out_in_its_deadline_and_the_server_logs_it_and_keeps_serving(
    stranger_node: Node, client_node: Node, server: rpc.Server, keys: dict[str, Keypair],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="zmqkit.security")
    with rpc.Client(stranger_node, "calc", timeout=1.0) as stranger, took(1.0 + SLACK), \
            pytest.raises(Timeout, match="keyring"):
        stranger.add(1, 2)

    async def stranger_async() -> None:
        async with rpc.AsyncClient(stranger_node, "calc", timeout=1.0) as client:
            with took(1.0 + SLACK), pytest.raises(Timeout):
                await client.add(1, 2)

    asyncio.run(stranger_async())
    refusals = [r for r in caplog.records if r.name == "zmqkit.security" and "refused" in r.message]
    assert refusals, "the server did not log the refusal"
    assert keys["stranger"].public[:8] in refusals[0].getMessage()
    assert refusals[0].levelno == logging.WARNING
    assert zap_stats()["refused"] >= 1
    assert server.stats()["calls"] == 0  # nothing of the stranger's reached a handler
    with rpc.Client(client_node, "calc", timeout=2) as client:
        assert client.add(20, 22) == 42
    assert server.stats()["calls"] == 1


def test_curve_plain_client_gets_security_error_at_once(plain_node: Node) -> None:
    with rpc.Client(plain_node, "calc", timeout=3) as client, took(0.5), \
            pytest.raises(SecurityError, match="requires CURVE"):
        client.add(1, 2)

    async def main() -> None:
        async with rpc.AsyncClient(plain_node, "calc", timeout=3) as client:
            with took(0.5), pytest.raises(SecurityError, match="requires CURVE"):
                await client.add(1, 2)

    asyncio.run(main())


def test_curve_raw_plain_dealer_never_gets_an_answer_and_the_server_keeps_serving(
    server: rpc.Server, client_node: Node
) -> None:
    before = zap_stats()
    dealer = Socket(zmq.DEALER)
    try:
        dealer.connect(server.endpoint)
        for call_id in range(1, 21):
            dealer.send(codec.encode_request(call_id, "add", [1, 2], {}))
        dealer.send_multipart([b"two", b"frames"])
        assert not dealer.poll(1.0), "a plain DEALER got an answer from a CURVE server"
    finally:
        dealer.close()
    assert server.stats()["calls"] == 0 and server.stats()["bad-requests"] == 0
    assert zap_stats().get("admitted", 0) == before.get("admitted", 0)  # never even asked
    with rpc.Client(client_node, "calc", timeout=2) as client:
        assert client.add(1, 2) == 3


def test_curve_client_whose_keyring_lacks_the_server_key_refuses_to_call(
    make_node: MakeNode, server: rpc.Server, keys: dict[str, Keypair]
) -> None:
    # the server would admit this client (its key is in the server's ring), but the client
    # does not trust the server's key: it must not connect at all
    wary = make_node("wary", keys=keys["client"], keyring=[keys["attacker"].public])
    wait_serving(wary, "calc")
    before = zap_stats()
    with rpc.Client(wary, "calc", timeout=3) as client, took(0.5), \
            pytest.raises(SecurityError, match="not in the keyring"):
        client.add(1, 2)

    async def main() -> None:
        async with rpc.AsyncClient(wary, "calc", timeout=3) as client:
            with took(0.5), pytest.raises(SecurityError, match="not in the keyring"):
                await client.add(1, 2)

    asyncio.run(main())
    time.sleep(0.2)
    assert zap_stats() == before  # no handshake was even tried
    assert server.stats()["calls"] == 0


def test_curve_client_refuses_a_server_without_a_key(
    make_node: MakeNode, keys: dict[str, Keypair]
) -> None:
    # a downgrade: a plain node under the name the client wants (or a beacon stripped of its
    # key) must not get the client's calls in clear
    rpc.serve(make_node("calc"), Service())
    careful = make_node("careful", keys=keys["client"], keyring=[keys["server"].public])
    wait_serving(careful, "calc")
    with rpc.Client(careful, "calc", timeout=3) as client, took(0.5), \
            pytest.raises(SecurityError, match="no CURVE key"):
        client.add(1, 2)


# -- what a spoofed beacon can and cannot do ----------------------------------------------------


def test_curve_spoofed_beacon_lists_a_fake_peer_and_draws_connections_but_cannot_impersonate(
    make_node: MakeNode, server: rpc.Server, keys: dict[str, Keypair], beacon_port: int
) -> None:
    """The attacker copies the real server's public key from its beacon and advertises its own
    endpoint under the server's name. Nodes list the fake peer and connect to the attacker, but
    the attacker lacks the server's secret key: the handshake fails and it learns nothing."""
    client_node = make_node("app", keys=keys["client"], keyring=[keys["server"].public])
    attacker = Socket(zmq.ROUTER)  # the best the attacker can do: a CURVE server of its own keys
    try:
        attacker.raw.curve_server = True
        attacker.raw.curve_secretkey = keys["attacker"].secret.encode()
        attacker.raw.curve_publickey = keys["attacker"].public.encode()
        monitor = attacker.raw.get_monitor_socket(zmq.EVENT_ACCEPTED)
        fake_endpoint = attacker.bind("127.0.0.1")
        spoof = SpoofedBeacon(beacon_port, "impostor", {"rpc": fake_endpoint},
                              {CURVE_HEADER: keys["server"].public})
        with spoof, rpc.Client(client_node, "impostor", timeout=1.0) as client:
            wait_serving(client_node, "impostor")
            [fake] = client_node.peers("impostor")  # CAN: a fake peer is listed
            assert fake.endpoints["rpc"] == fake_endpoint
            with took(1.0 + SLACK), pytest.raises(Timeout):  # CANNOT: complete the handshake
                client.echo(MARKER)
            events = []
            deadline = time.monotonic() + 2.0
            while zmq.EVENT_ACCEPTED not in events and monitor.poll(100):
                events.append(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
                assert time.monotonic() < deadline, events
            assert zmq.EVENT_ACCEPTED in events  # CAN: make the client connect to it
            assert not attacker.poll(0.1)  # CANNOT: receive the request
        attacker.raw.disable_monitor()
        monitor.close(linger=0)
    finally:
        attacker.close()
    with rpc.Client(client_node, "calc", timeout=2) as client:  # the real server is unharmed
        assert client.add(1, 2) == 3


@pytest.mark.parametrize("hijack", [False, True], ids=["new-uuid", "real-uuid-higher-seq"])
def test_curve_spoofed_beacon_with_a_trusted_key_cannot_pass_for_the_real_server(
    make_node: MakeNode, server: rpc.Server, keys: dict[str, Keypair], beacon_port: int,
    hijack: bool,
) -> None:
    """A beacon points at the real server's endpoint with another key that the client trusts
    (``attacker``): the client encrypts its handshake to that key, which the real server cannot
    read, so the call fails in its deadline; no call reaches the server. With the real server's
    own UUID and a higher seq, the spoof even replaces the server's entry in the peer table:
    that denies service while it lasts, and still impersonates nobody."""
    client_node = make_node("app", keys=keys["client"],
                            keyring=[keys["server"].public, keys["attacker"].public])
    wait_serving(client_node, "calc")
    [real] = client_node.peers("calc")
    spoof = SpoofedBeacon(
        beacon_port, "calc", {"rpc": server.endpoint}, {CURVE_HEADER: keys["attacker"].public},
        node_uuid=real.uuid if hijack else None, seq=real.seq + 1000 if hijack else 1,
    )
    with spoof, rpc.Client(client_node, "calc", timeout=1.0) as client:
        wait_until(lambda: any(p.headers[CURVE_HEADER] == keys["attacker"].public
                               for p in client_node.peers("calc")), 3, "the spoofed peer")
        if hijack:
            assert [p.headers[CURVE_HEADER] for p in client_node.peers("calc")] == [
                keys["attacker"].public
            ]
            with took(1.0 + SLACK), pytest.raises(Timeout):
                client.add(1, 2)
            assert server.stats()["calls"] == 0
        else:
            # two "calc" nodes now; the spoofed one never completes a handshake, so no request
            # is ever sent to it: each call goes on to the real server within its deadline
            for _ in range(6):
                with took(1.0):
                    assert client.add(1, 2) == 3
            assert server.stats()["calls"] == 6


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "plain"])
def test_curve_relay_on_the_path_sees_only_ciphertext_and_cannot_alter_a_call(
    make_node: MakeNode, keys: dict[str, Keypair], beacon_port: int, secure: bool
) -> None:
    """A spoofed beacon sends the client through the attacker's relay. Under CURVE the call
    works (the relay passes the handshake on), the relay never sees the secret value, and a
    relay that alters bytes breaks the connection instead of the message. Without keys (the
    control) the relay reads the value and forges the answer."""
    security: dict[str, Any] = {}
    if secure:
        security = {"keys": keys["server"], "keyring": [keys["client"].public]}
    server = rpc.serve(make_node("calc", **security), Service())
    client_node = make_node("app", **({"keys": keys["client"], "keyring": [keys["server"].public]}
                                      if secure else {}))
    headers = {CURVE_HEADER: keys["server"].public} if secure else {}
    with Relay(server.endpoint) as relay, \
            SpoofedBeacon(beacon_port, "calc-via-relay", {"rpc": relay.endpoint}, headers), \
            rpc.Client(client_node, "calc-via-relay", timeout=1.0) as client:
        wait_serving(client_node, "calc-via-relay")
        assert client.echo(MARKER) == MARKER
        assert relay.connections >= 1
        if not secure:
            assert MARKER.encode() in relay.seen  # the control: in clear, the relay reads it
            relay.rewrite = (MARKER.encode(), b"forged-by-the-relay")
            assert client.echo(MARKER) == "forged-by-the-relay"  # ...and forges the answer
            return
        assert MARKER.encode() not in relay.seen
        calls_before = server.stats()["calls"]
        relay.flip = True
        with took(1.0 + SLACK), pytest.raises(Timeout):
            client.echo(MARKER)
        assert server.stats()["calls"] == calls_before  # the altered request never ran
        assert MARKER.encode() not in relay.seen


# -- CURVE pub/sub --------------------------------------------------------------------------------


def publish_until_received(publisher: pubsub.Publisher, subscriber: pubsub.Subscriber,
                           timeout: float) -> pubsub.Message:
    deadline = time.monotonic() + timeout
    while True:
        publisher.publish("secrets", {"value": MARKER})
        try:
            return subscriber.recv(0.05)
        except Timeout:
            if time.monotonic() > deadline:
                raise


def keep_receiving_until(subscriber: pubsub.Subscriber, condition: Callable[[], object],
                         timeout: float = 3.0) -> None:
    """Receive (which is when a subscriber looks at discovery) until ``condition()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{subscriber!r}: condition not met in {timeout} s"
        with contextlib.suppress(Timeout):
            subscriber.recv(0.05)


@pytest.mark.parametrize("batch", [False, True], ids=["plain-publisher", "batching-publisher"])
def test_curve_pubsub_allowed_subscriber_receives_and_a_stranger_gets_nothing(
    make_node: MakeNode, keys: dict[str, Keypair], batch: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zmqkit.security")
    pub_node = make_node("ticker", keys=keys["server"], keyring=[keys["client"].public])
    publisher = pubsub.Publisher(pub_node, batch=batch)
    allowed_node = make_node("screen", keys=keys["client"], keyring=[keys["server"].public])
    stranger_node = make_node("snoop", keys=keys["stranger"], keyring=[keys["server"].public])
    with pubsub.Subscriber(allowed_node, "secrets") as allowed, \
            pubsub.Subscriber(stranger_node, "secrets") as stranger:
        allowed.wait_for_publishers(timeout=3)
        stranger.wait_for_publishers(timeout=3)  # it connects; the handshake is what fails
        message = publish_until_received(publisher, allowed, timeout=3)
        assert message.data == {"value": MARKER} and message.publisher == "ticker"
        for _ in range(20):
            publisher.publish("secrets", {"value": MARKER})
        with pytest.raises(Timeout):
            stranger.recv(0.5)
        assert stranger.stats()["received"] == 0
    assert any(keys["stranger"].public[:8] in r.getMessage() for r in caplog.records)


def test_curve_pubsub_subscriber_skips_publishers_it_may_not_trust(
    make_node: MakeNode, keys: dict[str, Keypair]
) -> None:
    pub_node = make_node("ticker", keys=keys["server"],
                         keyring=[keys["client"].public, keys["stranger"].public])
    publisher = pubsub.Publisher(pub_node)
    wary_node = make_node("wary", keys=keys["stranger"], keyring=[keys["attacker"].public])
    plain_node = make_node("plain")
    good_node = make_node("good", keys=keys["client"], keyring=[keys["server"].public])
    with pubsub.Subscriber(wary_node, "secrets") as wary, \
            pubsub.Subscriber(plain_node, "secrets") as plain, \
            pubsub.Subscriber(good_node, "secrets") as good:
        good.wait_for_publishers(timeout=3)
        publish_until_received(publisher, good, timeout=3)
        for subscriber in (wary, plain):
            keep_receiving_until(subscriber,
                                 lambda s=subscriber: s.stats().get("refused-publishers"))
            stats = subscriber.stats()
            assert stats["refused-publishers"] == 1
            assert stats["publishers"] == 0 and stats["received"] == 0
            with pytest.raises(Timeout):
                subscriber.recv(0.3)
            assert subscriber.stats()["refused-publishers"] == 1  # counted once, not per look


# -- keys from files, across processes, through the command line -------------------------------


def test_curve_cli_server_and_client_in_separate_processes_with_key_files(
    tmp_path: Path, beacon_port: int
) -> None:
    for who in ("server", "client", "stranger"):
        made = zmqkit_command("keys", "new", str(tmp_path / who))
        assert made.returncode == 0, made.stderr
    rings = {who: tmp_path / f"{who}-ring" for who in ("server", "client")}
    for ring in rings.values():
        ring.mkdir()
    (rings["server"] / "client.pub").write_bytes((tmp_path / "client.pub").read_bytes())
    (rings["client"] / "server.pub").write_bytes((tmp_path / "server.pub").read_bytes())
    port = ["--port", str(beacon_port)]

    demo = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "demo", "calc", *port, "--duration", "30",
         "--keys", str(tmp_path / "server"), "--keyring", str(rings["server"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert demo.stdout is not None
        ready, _, _ = select.select([demo.stdout], [], [], 15)
        line = demo.stdout.readline() if ready else ""  # "calc serving at tcp://..."
        assert "serving at" in line, (line, demo.poll())

        allowed = zmqkit_command("call", "calc", "add", "1", "2", *port, "--timeout", "5",
                                 "--keys", str(tmp_path / "client"),
                                 "--keyring", str(rings["client"]))
        assert (allowed.returncode, allowed.stdout.strip()) == (0, "3"), allowed.stderr

        stranger = zmqkit_command("call", "calc", "add", "1", "2", *port, "--timeout", "1.5",
                                  "--keys", str(tmp_path / "stranger"),
                                  "--keyring", str(rings["client"]))
        assert stranger.returncode == 1
        assert "could not connect" in stranger.stderr and len(stranger.stderr.splitlines()) == 1

        plain = zmqkit_command("call", "calc", "add", "1", "2", *port, "--timeout", "3")
        assert plain.returncode == 1 and "requires CURVE" in plain.stderr

        (tmp_path / "client.secret").chmod(0o644)  # a careless copy of the secret key
        careless = zmqkit_command("call", "calc", "add", "1", "2", *port,
                                  "--keys", str(tmp_path / "client"),
                                  "--keyring", str(rings["client"]))
        assert careless.returncode == 2 and "readable by others" in careless.stderr
    finally:
        demo.kill()
        demo.communicate(timeout=5)
