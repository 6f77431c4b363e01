"""Trace context across calls (the ``zmqkit[otel]`` extra): one trace over two nodes.

The caller's span is the parent of the server's span around the handler, for a plain, a
blocking and an async handler; a call outside any span carries nothing; without OpenTelemetry
nothing is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from zmqkit.patterns import rpc

from zmqkit import Node, RemoteError

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the test extra installs it")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

EXPORTER = InMemorySpanExporter()
PROVIDER = sdk.TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)  # the server's spans go where OpenTelemetry is told (once)


class Service:
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc.blocking
    def slow_add(self, a: int, b: int) -> int:
        return a + b

    async def async_add(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    def fail(self) -> None:
        raise ValueError("no")


@pytest.fixture
def client(beacon_port: int) -> Iterator[rpc.Client]:
    EXPORTER.clear()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Node("adder", port=beacon_port))
        rpc.serve(server, Service())
        caller = stack.enter_context(Node("caller", port=beacon_port, announce=False))
        yield stack.enter_context(rpc.Client(caller, "adder"))


@pytest.mark.parametrize("method", ["add", "slow_add", "async_add"])
def test_the_server_span_is_a_child_of_the_callers_span(client: rpc.Client, method: str) -> None:
    tracer = PROVIDER.get_tracer("test")
    with tracer.start_as_current_span("caller work") as parent:
        assert client.call(method, 2, 3) == 5
    spans = {span.name: span for span in EXPORTER.get_finished_spans()}
    server = spans[f"rpc.server {method}"]
    assert server.kind == trace.SpanKind.SERVER
    assert server.context.trace_id == parent.get_span_context().trace_id
    assert server.parent is not None and server.parent.span_id == parent.get_span_context().span_id


def test_a_failing_handler_marks_its_span_and_a_call_outside_a_span_carries_nothing(
        client: rpc.Client) -> None:
    tracer = PROVIDER.get_tracer("test")
    with tracer.start_as_current_span("caller work"), pytest.raises(RemoteError):
        client.call("fail")
    [failed] = [s for s in EXPORTER.get_finished_spans() if s.name == "rpc.server fail"]
    assert failed.status.status_code == trace.StatusCode.ERROR
    EXPORTER.clear()
    assert client.call("add", 1, 1) == 2
    assert EXPORTER.get_finished_spans() == ()


def test_without_opentelemetry_nothing_is_imported_and_calls_work(beacon_port: int) -> None:
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from zmqkit import Node, RemoteError
from zmqkit.patterns import rpc
from zmqkit.patterns.rpc import tracing
assert not tracing.ENABLED
with Node("adder", port={beacon_port}) as server, Node("c", port={beacon_port}) as caller:
    rpc.serve(server, {{"add": lambda a, b: a + b}})
    with rpc.Client(caller, "adder") as client:
        assert client.call("add", 2, 3) == 5
assert not any(name.startswith("opentelemetry") and sys.modules[name] is not None
               for name in sys.modules)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_server_takes_the_trace_key_out_whatever_its_value(beacon_port: int) -> None:
    """docs/protocol.md 6.9, with raw frames: the method never sees ``zmqkit.trace``."""
    import cbor2
    import zmq

    with Node("adder", port=beacon_port) as server:
        rpc.serve(server, {"add": lambda a, b: a + b})
        with zmq.Context.instance().socket(zmq.DEALER) as dealer:
            dealer.linger, dealer.rcvtimeo = 0, 5000
            dealer.connect(server.endpoints["rpc"])
            for carrier in ({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
                            "not a map", {"traceparent": 7}):
                dealer.send(cbor2.dumps([1, 1, 3, "add", [2, 3], {"zmqkit.trace": carrier}]))
                assert cbor2.loads(dealer.recv()) == [1, 2, 3, 5]
