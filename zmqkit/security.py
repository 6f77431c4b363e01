"""CURVE security: keypairs, keyrings, and the ZAP handler that enforces them.

A node given a keypair and a keyring encrypts everything it serves and accepts only peers whose
public key is in its ring; a caller checks a server's key against its own ring before it connects.
The beacon carries a node's public key (header ``curve``) only as a hint: a spoofed hint cannot
complete a CURVE handshake without the matching secret key.

Key files (``zmqkit keys new PATH``):

    PATH.pub       one line: the public key, 40 characters of Z85
    PATH.secret    mode 0600; two lines: ``public <Z85>`` and ``secret <Z85>``

A keyring is a directory of ``*.pub`` files (or any list of public keys).

ZeroMQ asks a ZAP handler whether to admit each CURVE peer. ``ZapHandler`` is that handler for the
whole process: one named thread ("zmqkit-zap"), started by the first secure node and stopped
with the last, answering per domain (one domain per node) from that node's keyring.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.z85

from .errors import ConfigError, ZmqkitError

__all__ = ["CURVE_HEADER", "Keypair", "Keyring", "Security", "SecurityError", "ZapHandler"]

log = logging.getLogger("zmqkit.security")

CURVE_HEADER = "curve"  # the beacon header that carries a node's public key
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
Z85_KEY_LENGTH = 40


class SecurityError(ZmqkitError):
    """A peer's key is not in this node's keyring, or one side has keys and the other none."""


def _check_key(key: str, what: str) -> str:
    if len(key) != Z85_KEY_LENGTH:
        raise ConfigError(f"{what} must be {Z85_KEY_LENGTH} characters of Z85, not {len(key)}")
    try:
        zmq.utils.z85.decode(key.encode())
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{what} is not valid Z85: {exc}") from exc
    return key


@dataclass(frozen=True, slots=True)
class Keypair:
    """A CURVE keypair, both halves as Z85 text."""

    public: str
    secret: str

    def __repr__(self) -> str:  # never print the secret
        return f"Keypair(public={self.public!r})"

    @classmethod
    def generate(cls) -> Keypair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keypair:
        """Read ``PATH.secret`` (``PATH`` may name it with or without the suffix).

        Raises:
            ConfigError: missing, unreadable or malformed, or readable by others.
        """
        secret_path = _with_suffix(path, ".secret")
        try:
            mode = secret_path.stat().st_mode
            fields = dict(
                line.split(None, 1) for line in secret_path.read_text().split("\n") if line
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the secret key file {secret_path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{secret_path} is readable by others: chmod 600 it")
        try:
            public = _check_key(fields["public"].strip(), "the public key")
            secret = _check_key(fields["secret"].strip(), "the secret key")
        except KeyError as exc:
            raise ConfigError(f"{secret_path} lacks the line {exc.args[0]!r}") from exc
        if zmq.curve_public(secret.encode()).decode() != public:
            raise ConfigError(f"{secret_path}: the public key does not belong to the secret key")
        return cls(public, secret)

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``PATH.pub`` and ``PATH.secret`` (mode 0600, never overwritten); return both paths.

        Raises:
            ConfigError: a file is already there, or cannot be written.
        """
        public_path, secret_path = _with_suffix(path, ".pub"), _with_suffix(path, ".secret")
        written: list[Path] = []
        try:
            # the public file first: if it is there already, nothing is written (a new secret
            # beside an old public key would be a pair that does not match)
            with open(public_path, "x") as public_file:
                written.append(public_path)
                public_file.write(self.public + "\n")
            descriptor = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written.append(secret_path)
            with os.fdopen(descriptor, "w") as secret_file:
                secret_file.write(f"public {self.public}\nsecret {self.secret}\n")
        except OSError as exc:
            for done in written:  # all or nothing
                done.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the key files for {path}: {exc}") from exc
        return public_path, secret_path


def _with_suffix(path: str | os.PathLike[str], suffix: str) -> Path:
    base = Path(path)
    if base.suffix in (".pub", ".secret"):
        base = base.with_suffix("")
    return base.with_name(base.name + suffix)


class Keyring:
    """The public keys a node accepts."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self.keys = frozenset(_check_key(key.strip(), "a keyring key") for key in keys)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def __or__(self, other: Keyring) -> Keyring:
        return Keyring(self.keys | other.keys)

    def __repr__(self) -> str:
        return f"<Keyring of {len(self.keys)} keys>"

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Iterable[str]) -> Keyring:
        """A keyring from a directory of ``*.pub`` files, one ``.pub`` file, or a list of keys.

        Raises:
            ConfigError: the directory or a file cannot be read, or holds a malformed key.
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            try:
                return cls(file.read_text().strip() for file in files)
            except OSError as exc:
                raise ConfigError(f"cannot read the keyring {path}: {exc}") from exc
        return cls(source)


class Security:
    """What a secure node knows: its keypair and the keys it accepts."""

    def __init__(self, keypair: Keypair, keyring: Keyring) -> None:
        self.keypair = keypair
        self.keyring = keyring
        self.domain = ""

    def secure_server(self, sock: Any) -> None:
        """Make a socket that binds a CURVE server admitting only the keyring (before bind)."""
        raw = sock.raw
        raw.curve_server = True
        raw.curve_secretkey = self.keypair.secret.encode()
        raw.curve_publickey = self.keypair.public.encode()
        raw.zap_domain = self.domain.encode()
        # without this, libzmq admits every CURVE client while no ZAP handler is bound (its
        # "encryption without authentication" legacy mode): fail closed instead
        raw.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def secure_client(self, sock: Any, server_key: str | None, who: str) -> None:
        """Prepare ``sock`` to connect to a server presenting ``server_key`` (before connect).

        Raises:
            SecurityError: the server's key is missing or not in this node's keyring.
        """
        if server_key is None:
            raise SecurityError(f"{who} has no CURVE key, and this node talks only CURVE")
        if server_key not in self.keyring and server_key != self.keypair.public:
            raise SecurityError(
                f"{who} presents key {server_key[:8]}..., which is not in the keyring"
            )
        raw = sock.raw
        raw.curve_serverkey = server_key.encode()
        raw.curve_secretkey = self.keypair.secret.encode()
        raw.curve_publickey = self.keypair.public.encode()


def check_plain_peer(server_key: str | None, who: str) -> None:
    """A node without keys cannot talk to a CURVE server: say so now, not after a timeout.

    Raises:
        SecurityError: the peer advertises a CURVE key.
    """
    if server_key is not None:
        raise SecurityError(
            f"{who} requires CURVE: give this node keys and a keyring that holds "
            f"its key {server_key[:8]}..."
        )


class ZapHandler:
    """Admits CURVE peers by domain (one domain per secure node), in one thread per process."""

    _lock = threading.Lock()
    _instance: ZapHandler | None = None

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.context = context
        self.rings: dict[str, Keyring] = {}
        self.stats: Counter[str] = Counter()
        self._refused_keys: set[str] = set()
        self._ready = threading.Event()
        self._startup_error: zmq.ZMQError | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="zmqkit-zap", daemon=True)

    @classmethod
    def acquire(cls, domain: str, keyring: Keyring) -> ZapHandler:
        """Register ``domain``; the first registration starts the handler thread."""
        with cls._lock:
            if cls._instance is None:
                handler = ZapHandler(zmq.Context.instance())
                handler._thread.start()
                handler._ready.wait(5.0)
                if handler._startup_error is not None or not handler._thread.is_alive():
                    handler._stopping = True
                    handler._thread.join(2.0)
                    raise SecurityError(f"cannot start the ZAP handler: {handler._startup_error}")
                cls._instance = handler
            cls._instance.rings[domain] = keyring
            return cls._instance

    @classmethod
    def release(cls, domain: str) -> None:
        """Forget ``domain``; the last one stops and joins the handler thread."""
        with cls._lock:
            handler = cls._instance
            if handler is None:
                return
            handler.rings.pop(domain, None)
            if handler.rings:
                return
            cls._instance = None
            # joined under the lock: a node starting now must not bind the ZAP endpoint while
            # this handler still holds it (its bind would fail and leave no handler at all)
            handler._stopping = True
            handler._thread.join(2.0)

    def _run(self) -> None:
        sock = self.context.socket(zmq.REP)
        sock.linger = 0
        sock.rcvtimeo = 100
        bound = False
        try:
            try:
                sock.bind(ZAP_ENDPOINT)
                bound = True
            except zmq.ZMQError as exc:  # handed to acquire(), which refuses to go on without us
                self._startup_error = exc
                return
            self._ready.set()
            while not self._stopping:
                try:
                    request = sock.recv_multipart()
                except zmq.Again:
                    continue
                sock.send_multipart(self._answer(request))
        finally:
            self._ready.set()
            if bound:  # at once: a closed socket gives its inproc name back only later
                sock.unbind(ZAP_ENDPOINT)
            sock.close()

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """One ZAP reply: 200 for a key in the domain's keyring, 400 otherwise."""
        if len(request) < 7:
            return [
                b"1.0",
                request[1] if len(request) > 1 else b"",
                b"500",
                b"bad request",
                b"",
                b"",
            ]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        ring = self.rings.get(domain.decode(errors="replace"))
        if mechanism != b"CURVE" or ring is None:
            self.stats["refused"] += 1
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        key = zmq.utils.z85.encode(request[6]).decode()
        if key in ring:
            self.stats["admitted"] += 1
            return [version, request_id, b"200", b"OK", key.encode(), b""]
        self.stats["refused"] += 1
        level = logging.DEBUG if key in self._refused_keys else logging.WARNING
        if len(self._refused_keys) >= 1000:  # a flood of strangers must not grow memory
            self._refused_keys.clear()
        self._refused_keys.add(key)
        log.log(
            level,
            "refused a CURVE peer from %s: key %s... is not in the keyring",
            address.decode(errors="replace"),
            key[:8],
        )
        return [version, request_id, b"400", b"key not in keyring", b"", b""]
