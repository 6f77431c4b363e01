"""Which topics a subscriber wants: exact topics, and ``prefix*`` patterns. Pure.

An exact topic is selected by ZeroMQ itself (the subscription prefix holds the whole topic). A
pattern cannot be: its subscriber receives every publication and keeps those whose topic starts
with the pattern's prefix (``news.*`` keeps ``news.uk`` and ``news.uk.sport``, not ``news``).
"""

from __future__ import annotations

from zmqkit import ConfigError

from . import wire

__all__ = ["WILDCARD", "Topics", "check_topic"]

WILDCARD = "*"


def check_topic(topic: object) -> None:
    """A topic is non-empty text that does not end in ``*`` (which marks a pattern).

    Raises:
        ConfigError: it is not.
    """
    if not isinstance(topic, str) or not topic or topic.endswith(WILDCARD):
        raise ConfigError(f"a topic is non-empty text not ending in {WILDCARD!r}, not {topic!r}")


class Topics:
    """The exact topics and the pattern prefixes of one subscriber."""

    def __init__(self) -> None:
        self.exact: set[str] = set()
        self.patterns: set[str] = set()  # "news." for "news.*"; "" for "*" (every topic)

    def __repr__(self) -> str:
        return repr(self.names())

    def names(self) -> list[str]:
        """The topics and patterns as given, sorted (exact first)."""
        return sorted(self.exact) + sorted(prefix + WILDCARD for prefix in self.patterns)

    def add(self, topic: str) -> tuple[bytes, ...]:
        """Take ``topic`` (exact) or ``prefix*``; return the ZeroMQ prefixes to subscribe to.

        Raises:
            ConfigError: not a topic or a pattern.
        """
        if isinstance(topic, str) and topic.endswith(WILDCARD):
            self.patterns.add(topic[:-1])
            return wire.ANY_TOPIC_PREFIXES
        check_topic(topic)
        self.exact.add(topic)
        return wire.topic_prefixes(topic)

    def wants(self, topic: str) -> bool:
        """Whether a publication on ``topic`` is for this subscriber."""
        return topic in self.exact or (
            bool(self.patterns) and any(topic.startswith(prefix) for prefix in self.patterns)
        )
