"""What ``Surveyor`` and ``AsyncSurveyor`` share: the life cycle, a survey's start and end, stats.

A surveyor is usable once made and attached to its node (``node.close()`` closes it); it hears
of discovery's changes to wake the surveys running. The front-ends differ in who owns the
sockets (a set per calling thread, or a set per survey on one loop) and in how a survey waits.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

from zmqkit import Node, PeerEvent, check_timeout

from .core import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_TIMEOUT,
    SurveyResult,
    SurveyState,
    check_max_concurrent,
    check_name,
    searched,
)

__all__ = ["BaseSurveyor"]


class BaseSurveyor:
    """Surveys the nodes called ``name`` (None: every node serving RPC); see ``Surveyor``.

    Raises:
        ConfigError: a bad name, timeout or ``max_concurrent``.
        ClosedError: the node is closed.
    """

    def __init__(self, node: Node, name: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        check_name(name)
        self.node = node
        self.name = name
        self.timeout = check_timeout(timeout)
        self._max_concurrent = check_max_concurrent(max_concurrent)
        self._ids = itertools.count(1)  # shared by every survey: a call id is never reused
        self._lock = threading.Lock()  # for what the beacon thread and close() read
        self._stats: Counter[str] = Counter()
        self._closed = False
        node.attach(self)  # first: a closed node refuses before anything is made
        self._unsubscribe = node.on_event(self._on_presence)

    def __repr__(self) -> str:
        return f"<zmqkit survey.{type(self).__name__} of {self.name or 'every RPC node'!r}>"

    def stats(self) -> dict[str, int]:
        """Counters: surveys, asked, dropped-* by reason (answers too late, garbage...)."""
        with self._lock:
            return dict(self._stats)

    def describe(self) -> dict[str, Any]:
        """For introspection (``Node.report``): the name surveyed, and the surveys made."""
        stats = self.stats()
        return {"target": self.name, "calls": stats.get("surveys", 0), "stats": stats}

    def close(self) -> None:
        """Close the sockets; later surveys raise ClosedError, and one running ends with it.
        Safe to call twice, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unsubscribe()
        self._close_sockets()
        self.node.detach(self)

    def _close_sockets(self) -> None:
        """After the close flag is set: close the sockets where they belong, wake the surveys."""
        raise NotImplementedError

    def _on_presence(self, event: PeerEvent) -> None:
        """In the beacon thread: wake every survey running, to look at discovery again."""
        raise NotImplementedError

    def _start(self, method: str, args: tuple[Any, ...] | list[Any],
               kwargs: dict[str, Any] | None, timeout: float | None,
               min_replies: int | None) -> SurveyState:
        """A survey's state, its clock started now."""
        return SurveyState(
            method,
            args,
            kwargs or {},
            now=time.monotonic(),
            timeout=self.timeout if timeout is None else timeout,
            call_ids=self._ids,
            min_replies=min_replies,
        )

    def _finish(self, state: SurveyState) -> SurveyResult:
        """A survey's result, counted in the stats."""
        with self._lock:
            self._stats.update(state.stats)
            self._stats["surveys"] += 1
        return state.result(time.monotonic(), searched=searched(self.name))
