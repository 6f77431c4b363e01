"""Attribute sugar: ``client.add(1, 2)`` is ``client.call("add", 1, 2)``, and nothing more.

The sugar never shadows a client's own names: Python looks an attribute up on the client first,
so its own methods always win, and a name that either client uses for itself (``close`` on an
``AsyncClient``, ``aclose`` or ``submit`` on a ``Client``, ``stats``...) is refused with an
``AttributeError`` rather than silently becoming a remote call. A remote method whose name
collides is called by name: ``client.call("close")``, ``await client.call("stats", 1)``.
"""

from __future__ import annotations

__all__ = ["RESERVED", "remote_method"]

RESERVED = frozenset({
    "aclose", "call", "call_with", "close", "closed", "describe", "methods", "name", "node",
    "primary", "replicas", "stats", "stream", "submit", "timeout",
})


def remote_method(client: object, name: str) -> str:
    """``name`` as a remote method of ``client`` (for ``__getattr__``).

    Raises:
        AttributeError: a private or dunder name, or one the clients use for themselves.
    """
    if name.startswith("_"):
        raise AttributeError(name)
    if name in RESERVED:
        raise AttributeError(
            f"{type(client).__name__} has no method {name!r}, and a name the clients use for "
            f"themselves is never a remote call by attribute: call a remote method of that name "
            f"as client.call({name!r}, ...)"
        )
    return name
