"""Flow-controlled streams, the server's side (docs/protocol.md, section 6.7).

A caller opens a stream with a REQUEST for ``zmqkit.stream``, args ``[method, args, kwargs,
window]``: the server may send the items whose index is below ``window``, and each CREDIT from
the caller raises that limit. So the server never runs more than a window ahead of its reader,
whatever the reader's speed, and holds nothing but the paused generator while the reader pauses.

    caller                                  server
    REQUEST zmqkit.stream [m, a, k, 256] ──►
                                        ◄── FLOW_ITEM 0 … FLOW_ITEM 255   (then it waits)
    CREDIT 384                           ──►
                                        ◄── FLOW_ITEM 256 … 383
                                        ◄── FLOW_END 1000  (or an ERROR), needing no credit

A ``Flow`` is one such stream: its credit, what it has sent, whether it must stop. Producers run
a generator within the credit and then return (a plain generator gives its worker thread back
to the pool while it waits; an async generator's task awaits its flow), and the server thread
resumes them when credit comes.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from zmqkit import EncodeError, codec

__all__ = [
    "IDLE_LIMIT",
    "MAX_WINDOW",
    "STREAM_METHOD",
    "Flow",
    "Stop",
    "collect",
    "collect_async",
    "open_args",
    "produce",
    "produce_async",
]

STREAM_METHOD = "zmqkit.stream"  # not a Python identifier, so no user method can clash
MAX_WINDOW = 10_000  # a window above the ROUTER's high-water mark could lose items there
IDLE_LIMIT = 300.0  # seconds a stream may wait for credit before the server ends it
COLLECT_LIMIT = codec.DEFAULT_MAX_MESSAGE_SIZE - 64  # the items of a plain call, and its head

# (frame, whether it ends the call) to the caller; None: nothing to send, the call is over
Post = Callable[[bytes | None, bool], None]
_NOTHING = object()  # no item made ahead


class Stop(enum.Enum):
    """Why a producer stops before its generator is exhausted."""

    CANCELLED = "cancelled"  # the caller sent CANCEL: the stream ends with FLOW_END
    IDLE = "idle"  # no credit for IDLE_LIMIT seconds: the stream ends with an ERROR
    CLOSED = "closed"  # the server closes: nothing more is sent


class Flow:
    """One flow-controlled stream on the server: how far its caller lets it run.

    The server thread calls ``grant``, ``cancel`` and ``expire``; the one producer running it
    calls ``allowance`` and counts ``sent``. A True return from the first three means the
    producer was waiting and must be resumed (``resume``, set by the server).
    """

    __slots__ = ("ahead", "call_id", "idle_since", "limit", "lock", "parked", "resume", "sent",
                 "stop")

    def __init__(self, call_id: int, window: int) -> None:
        self.call_id = call_id
        self.limit = window  # items with an index below this may be sent
        self.sent = 0  # the index of the next item
        self.ahead: Any = _NOTHING  # the next item, made before its credit came
        self.stop: Stop | None = None
        self.parked = False  # the producer is waiting for credit (or has not started)
        self.idle_since = 0.0
        self.lock = threading.Lock()
        self.resume: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"<zmqkit rpc flow {self.call_id}: {self.sent} sent, limit {self.limit}>"

    def grant(self, limit: int) -> bool:
        """A CREDIT: items below ``limit`` may go (a lower limit than before changes nothing;
        the limit never runs more than MAX_WINDOW past what was sent)."""
        with self.lock:
            self.limit = max(self.limit, min(limit, self.sent + MAX_WINDOW))
            return self._unpark(self.sent < self.limit)

    def cancel(self) -> bool:
        """A CANCEL: stop before the next item."""
        return self.halt(Stop.CANCELLED)

    def expire(self, now: float) -> bool:
        """End the flow if it has waited for credit longer than IDLE_LIMIT."""
        with self.lock:
            if not self.parked or now - self.idle_since < IDLE_LIMIT:
                return False
        return self.halt(Stop.IDLE)

    def halt(self, why: Stop) -> bool:
        """Stop before the next item, for ``why`` (the first reason given stands)."""
        with self.lock:
            if self.stop is None:
                self.stop = why
            return self._unpark(True)

    def allowance(self, now: float) -> int:
        """How many items the producer may send now; at 0 it waits (parked) for a resume."""
        with self.lock:
            allowed = self.limit - self.sent
            if allowed <= 0 and self.stop is None:
                self.parked = True
                self.idle_since = now
                return 0
            return max(allowed, 1)  # stopping: one more look, to end the stream

    def _unpark(self, runnable: bool) -> bool:
        if self.parked and runnable:
            self.parked = False
            return True
        return False


def open_args(args: list[Any]) -> tuple[str, list[Any], dict[str, Any], int] | str:
    """The ``[method, args, kwargs, window]`` of a ``zmqkit.stream`` request, or why not."""
    if len(args) != 4:
        return f"{STREAM_METHOD} takes [method, args, kwargs, window], not {len(args)} items"
    method, call_args, kwargs, window = args
    if type(method) is not str or type(call_args) is not list or type(kwargs) is not dict:
        return f"{STREAM_METHOD} takes [method (text), args (array), kwargs (map), window]"
    if not all(type(key) is str for key in kwargs):
        return f"{STREAM_METHOD}: the kwargs of the method must have text keys"
    if type(window) is not int or not 1 <= window <= MAX_WINDOW:
        return f"{STREAM_METHOD}: the window is 1 to {MAX_WINDOW} items, not {window!r}"
    return method, call_args, kwargs, window


def produce(flow: Flow, items: Generator[Any, Any, Any], post: Post,
            now: Callable[[], float]) -> bool:
    """Run a plain generator within ``flow``'s credit, posting its items; True once the stream
    has ended (its generator is closed), False when it waits for credit.

    It takes the next item before it looks at the credit, so that a stream whose last item
    used the last credit still ends (the end needs no credit): at most one item is made
    ahead, and it waits in the flow.

    Raises:
        Exception: whatever the generator raised (the stream ends with an ERROR for it).
    """
    call_id = flow.call_id
    while True:
        if flow.stop is not None:
            _finish(flow, post)
            items.close()
            return True
        if flow.ahead is _NOTHING:
            try:
                flow.ahead = next(items)
            except StopIteration:
                post(codec.encode_flow_end(call_id, flow.sent), True)
                return True
        if flow.allowance(now()) == 0:
            return False
        post(codec.encode_flow_item(call_id, flow.sent, flow.ahead), False)
        flow.ahead = _NOTHING
        flow.sent += 1


async def produce_async(flow: Flow, items: AsyncGenerator[Any, Any], post: Post,
                        now: Callable[[], float]) -> None:
    """``produce`` for an async generator, on the server's loop: it awaits credit in place.

    Raises:
        Exception: whatever the generator raised.
    """
    call_id = flow.call_id
    resumed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def resume() -> None:
        loop.call_soon_threadsafe(resumed.set)

    flow.resume = resume
    while True:
        if flow.stop is not None:
            _finish(flow, post)
            return
        if flow.ahead is _NOTHING:
            try:
                flow.ahead = await items.__anext__()
            except StopAsyncIteration:
                post(codec.encode_flow_end(call_id, flow.sent), True)
                return
        if flow.allowance(now()) == 0:
            await resumed.wait()
            resumed.clear()
            continue
        post(codec.encode_flow_item(call_id, flow.sent, flow.ahead), False)
        flow.ahead = _NOTHING
        flow.sent += 1


def _finish(flow: Flow, post: Post) -> None:
    """A stream stopped early: FLOW_END after a CANCEL, an ERROR after waiting too long."""
    if flow.stop is Stop.CANCELLED:
        post(codec.encode_flow_end(flow.call_id, flow.sent), True)
    elif flow.stop is Stop.IDLE:
        post(codec.encode_error(flow.call_id, "zmqkit.Timeout",
                                f"the stream waited {IDLE_LIMIT:g} s for credit"), True)
    else:
        post(None, True)  # closing: nothing to send, but the call is over


class _Collected:
    """The items of a stream method called with a plain REQUEST, encoded as they come, for
    one REPLY: bounded by the largest frame, so an endless generator cannot fill memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.encoded = bytearray()

    def add(self, item: Any) -> None:
        self.encoded += codec.dumps(item)
        self.count += 1
        if len(self.encoded) > COLLECT_LIMIT:
            raise EncodeError(
                f"{self.name}() yields over {codec.DEFAULT_MAX_MESSAGE_SIZE} bytes, more than one "
                f"reply holds: read it as a stream ({STREAM_METHOD})"
            )

    def reply(self, call_id: int) -> bytes:
        return codec.encode_reply_items(call_id, self.count, bytes(self.encoded))


def collect(name: str, call_id: int, items: Generator[Any, Any, Any]) -> bytes:
    """The REPLY to a plain REQUEST of a generator method: every item, in one array.

    Raises:
        EncodeError: the items are over one frame's size, or one cannot be encoded.
        Exception: whatever the generator raised.
    """
    collected = _Collected(name)
    try:
        for item in items:
            collected.add(item)
    finally:
        items.close()
    return collected.reply(call_id)


async def collect_async(name: str, call_id: int, items: AsyncGenerator[Any, Any]) -> bytes:
    """``collect`` for an async generator."""
    collected = _Collected(name)
    try:
        async for item in items:
            collected.add(item)
    finally:
        await items.aclose()
    return collected.reply(call_id)
