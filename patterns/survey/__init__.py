"""Scatter-gather: ask every node of a name the same RPC question and gather the answers.

    result = survey.ask(node, "sensor", "read", timeout=1.0)   # every node called "sensor"
    result.answers     # {Responder("sensor", uuid): value}: who answered, and what
    result.failed      # {Responder: RemoteError}: whose handler raised
    result.missing     # (Responder, ...): asked, but no answer in time (silent, dead or gone)

    survey.ask(node, None, "zmqkit.describe")                  # every node that serves RPC
    survey.ask(node, "sensor", "read", min_replies=2)          # a quorum: done at the 2nd answer

    sensors = survey.Surveyor(node, "sensor")                  # keeps its sockets between surveys
    sensors.ask("read")                                        # from any thread, several at once
    async with survey.AsyncSurveyor(node, "sensor") as sensors:
        await sensors.ask("read")                              # on the loop it was made on

A survey ends at the first of: ``min_replies`` answers (a quorum); every node asked has answered
or failed (without a quorum); the deadline. Dead nodes never hold it up: one that the beacon
declares gone is counted missing at once, one that is merely silent at the deadline. The
nodes asked are those discovered when the survey starts plus any that appear while it runs; the
asking node itself is never asked. No node found at all by the deadline is ``PeerNotFound``.

Why not ``rpc.Client``? It picks one node per call. A survey must reach each node, so it speaks
the RPC wire itself (docs/protocol.md section 6): one DEALER per node, connected to its ``rpc``
endpoint, one REQUEST each, answers matched by call id. Any ``rpc.serve`` server answers; nothing
new travels on the wire.

- ``core``            ``SurveyState``: who was asked, who answered or failed, when it is done (pure)
- ``connections``     one set of sockets, a DEALER per node, kept in step with discovery
- ``base``            what both surveyors share: life cycle, a survey's start and end, stats
- ``surveyor``        ``Surveyor`` (a socket set per calling thread) and the one-shot ``ask``
- ``async_surveyor``  ``AsyncSurveyor``: a socket set per survey running, on one loop
"""

from __future__ import annotations

from .async_surveyor import AsyncSurveyor
from .core import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_TIMEOUT,
    Ending,
    Responder,
    SurveyResult,
    SurveyState,
)
from .surveyor import Surveyor, ask

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_TIMEOUT",
    "AsyncSurveyor",
    "Ending",
    "Responder",
    "SurveyResult",
    "SurveyState",
    "Surveyor",
    "ask",
]
