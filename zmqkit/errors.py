"""Every error zmqkit raises, as one tree.

    ZmqkitError                 base of everything below
    ├── ProtocolError           bytes on the wire break the protocol (also ValueError)
    │   ├── MessageTooLarge     a frame or datagram over the configured maximum
    │   └── UnexpectedKind      a valid message of a kind the receiver does not take
    ├── EncodeError             a value that the wire cannot carry (also TypeError)
    ├── ConfigError             a bad option: unknown interface, bad seed... (also ValueError)
    ├── Timeout                 a deadline passed (also the builtin TimeoutError)
    ├── PeerNotFound            no peer of that name was discovered in time (also LookupError)
    ├── RemoteError             the peer's handler raised; carries its type name, message, traceback
    │   ├── MethodNotFound      the peer has no method of that name (type "zmqkit.MethodNotFound")
    │   └── BadArguments        the arguments do not fit the method (type "zmqkit.BadArguments")
    ├── SecurityError           a peer's key is refused, or one side has keys and the other none
    ├── ClosedError             you closed it, then used it
    ├── BrokenError             something outside broke it; the original is in ``__cause__``
    ├── BusyError               full: too many calls, tasks or whispers waiting already
    └── WrongThread             an asyncio part used off its own event loop (also RuntimeError);
                                the message says what to use instead

Lower-level errors (``zmq.ZMQError``, ``cbor2.CBORDecodeError``, ``OSError``) never reach users raw:
they are wrapped with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BadArguments",
    "BrokenError",
    "BusyError",
    "ClosedError",
    "ConfigError",
    "EncodeError",
    "MessageTooLarge",
    "MethodNotFound",
    "PeerNotFound",
    "ProtocolError",
    "RemoteError",
    "SecurityError",
    "Timeout",
    "UnexpectedKind",
    "WrongThread",
    "ZmqkitError",
    "remote_error",
]


class ZmqkitError(Exception):
    """Base class of every error zmqkit raises."""


class ProtocolError(ZmqkitError, ValueError):
    """Bytes received from the wire that do not follow docs/protocol.md."""


class MessageTooLarge(ProtocolError):
    """A frame or datagram larger than the configured maximum."""


class UnexpectedKind(ProtocolError):
    """A valid message, but not of the kind the receiver takes (a reply sent to a subscriber)."""


class EncodeError(ZmqkitError, TypeError):
    """A value that the wire cannot carry (see the value types in docs/protocol.md)."""


class ConfigError(ZmqkitError, ValueError):
    """An option that cannot work: an unknown interface, a malformed seed or endpoint."""


class Timeout(ZmqkitError, TimeoutError):
    """A deadline passed before the operation completed."""


class PeerNotFound(ZmqkitError, LookupError):
    """No peer with the wanted name was discovered before the deadline."""


class RemoteError(ZmqkitError):
    """The remote handler raised; this carries what it raised.

    Attributes:
        type_name: the remote exception's type, e.g. ``"ZeroDivisionError"``.
        message: ``str()`` of the remote exception.
        traceback: the remote traceback as text (may be empty).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback))


class MethodNotFound(RemoteError):
    """The remote node has no method of the name called."""


class BadArguments(RemoteError):
    """The arguments sent do not fit the remote method's signature."""


def remote_error(type_name: str, message: str, traceback: str = "") -> RemoteError:
    """The RemoteError (or the subclass the protocol names) for an ERROR reply."""
    kind = _REMOTE_ERRORS.get(type_name, RemoteError)
    return kind(type_name, message, traceback)


_REMOTE_ERRORS: dict[str, type[RemoteError]] = {
    "zmqkit.MethodNotFound": MethodNotFound,
    "zmqkit.BadArguments": BadArguments,
}


class ClosedError(ZmqkitError):
    """The object was closed by its owner and then used."""


class BrokenError(ZmqkitError):
    """Something outside our control broke the operation; the original error is ``__cause__``."""


class BusyError(ZmqkitError):
    """Full: a bounded queue (calls, tasks, whispers waiting) has no room; try again later."""


class SecurityError(ZmqkitError):
    """A peer's key is not in this node's keyring, or one side has keys and the other none."""


class WrongThread(ZmqkitError, RuntimeError):
    """Used from a thread or event loop that does not own it.

    User-facing sync parts work from any thread; this is raised by asyncio parts used off their
    loop and by a socket block touched by a second thread (a bug in the code that owns it).
    """
