"""CURVE security: keypairs, keyrings, and the ZAP handler that enforces them.

A node given a keypair and a keyring encrypts everything it serves and accepts only peers whose
public key is in its ring; a caller checks a server's key against its own ring before it connects.
The beacon carries a node's public key (header ``curve``) only as a hint: a spoofed hint cannot
complete a CURVE handshake without the matching secret key.

Key files (``zmqkit keys new PATH``):

    PATH.pub       one line: the public key, 40 characters of Z85
    PATH.secret    mode 0600; two lines: ``public <Z85>`` and ``secret <Z85>``

A keyring is a directory of ``*.pub`` files (or any list of public keys).

The socket blocks apply these policies (``Socket.serve_curve``, ``Socket.connect_peer``); the ZAP
handler that admits CURVE clients lives in ``zap``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.z85

from .errors import ConfigError, SecurityError

__all__ = ["CURVE_HEADER", "Keypair", "Keyring", "Security", "SecurityError", "check_plain_peer"]

log = logging.getLogger("zmqkit.security")

CURVE_HEADER = "curve"  # the beacon header that carries a node's public key
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
Z85_KEY_LENGTH = 40


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
        """A new random keypair (``zmqkit keys new`` saves one to files)."""
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

    def check_server_key(self, server_key: str | None, who: str) -> str:
        """The key of a server this node may connect to (its own, or one in the keyring).

        Raises:
            SecurityError: the server has no key, or one not in this node's keyring.
        """
        if server_key is None:
            raise SecurityError(f"{who} has no CURVE key, and this node talks only CURVE")
        if server_key not in self.keyring and server_key != self.keypair.public:
            raise SecurityError(
                f"{who} presents key {server_key[:8]}..., which is not in the keyring"
            )
        return server_key


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
