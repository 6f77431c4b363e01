"""The failover core: the RPC call core with failover's routing policy. Pure.

``FailoverCore`` is ``rpc.core.CallCore`` driving ``Replicas``: the same correlation, deadlines
and retry rules as every RPC call (written once there), with one sticky primary instead of load
spreading, and ``attempt_timeout`` for idempotent calls to a silent primary.
"""

from __future__ import annotations

from zmqkit.patterns.rpc.core import CallCore

from zmqkit import ConfigError

from .replicas import Order, Replicas, by_uuid

__all__ = ["FailoverCore", "check_name"]


def check_name(name: object) -> None:
    """A failover client calls the replicas of one name.

    Raises:
        ConfigError: ``name`` is not a non-empty text.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a failover client calls the replicas of one name (text), not {name!r}")


class FailoverCore(CallCore):
    """Which replica gets a call, when to move on, and what may be sent again.

    The drivers feed it discovery (``sync``), what happened to sends (``sent``,
    ``unreachable``), the frames that arrive (``receive``) and the time (``expire``); it keeps
    the calls in flight and ends each one exactly once.
    """

    def __init__(
        self, name: str, *, order: Order = by_uuid, attempt_timeout: float | None = None
    ) -> None:
        check_name(name)
        self.replicas = Replicas(order)
        super().__init__(name, self.replicas, attempt_timeout=attempt_timeout)
