"""W3C trace context across calls, when OpenTelemetry is installed (``pip install zmqkit[otel]``).

A call made inside an active span carries the span's context to the server as the reserved
keyword argument ``zmqkit.trace`` (a map with ``traceparent`` and, when set, ``tracestate``: the
W3C Trace Context headers, as OpenTelemetry's propagator writes them). A server that finds it
takes it out before the handler sees the arguments and runs the handler in a span named
``rpc.server METHOD`` (kind SERVER) whose parent is the caller's span: one trace across nodes.

Without OpenTelemetry, nothing is imported and nothing is added to any call. Streams are not
traced (yet): only plain calls carry the context.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .handlers import Handler, Mode

__all__ = ["ENABLED", "TRACE_KEY", "outgoing", "traced"]

TRACE_KEY = "zmqkit.trace"  # not a Python identifier: no handler can take it by mistake


def _installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # no parent package, or one blocked in sys.modules
        return False


ENABLED = _installed()


_current_context: Callable[[], Any] | None = None  # opentelemetry.context.get_current, once loaded


def outgoing(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs``, plus the current span's context when a span is active. On the path of
    every call: with no OpenTelemetry context set anywhere, it costs one lookup."""
    global _current_context
    if _current_context is None:
        from opentelemetry import context

        _current_context = context.get_current
    if not _current_context():
        return kwargs
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return kwargs
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {**kwargs, TRACE_KEY: carrier} if carrier else kwargs


def traced(handler: Handler, carrier: object) -> Handler:
    """``handler`` for one call, run in a server span continuing the caller's trace (or as it
    is, when ``carrier`` is no trace context or OpenTelemetry is absent)."""
    if not ENABLED or not isinstance(carrier, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in carrier.items()):
        return handler
    from opentelemetry import propagate, trace

    parent = propagate.extract(carrier)
    tracer = trace.get_tracer("zmqkit.rpc")
    name = f"rpc.server {handler.name}"
    function = handler.function

    def span() -> Any:
        return tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER)

    wrapped: Callable[..., Any]
    if handler.mode is Mode.ASYNC:
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            with span():
                return await function(*args, **kwargs)
        wrapped = call_async
    elif handler.mode is Mode.STREAM:
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with span():
                yield from function(*args, **kwargs)
        wrapped = stream
    elif handler.mode is Mode.ASYNC_STREAM:
        async def stream_async(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            with span():
                async for item in function(*args, **kwargs):
                    yield item
        wrapped = stream_async
    else:
        def call(*args: Any, **kwargs: Any) -> Any:
            with span():
                return function(*args, **kwargs)
        wrapped = call
    return Handler(handler.name, functools.wraps(function)(wrapped), handler.mode)
