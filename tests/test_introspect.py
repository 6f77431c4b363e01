"""Introspection: every node answers ``zmqkit.introspect``; the mesh read from its answers.

- the pure parts: ``Latency`` percentiles, the rows of ``mesh``, the ``graph`` and its DOT and SVG;
- a node's report names its parts and their counters, asked by a node that only listens;
- the wire as docs/protocol.md gives it, spoken with raw pyzmq and cbor2 frames;
- a keyed node answers only the peers in its keyring.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq
from zmqkit.patterns import failover, farm, groups, pubsub, rpc, state, survey

from zmqkit import Keypair, Keyring, Latency, Node
from zmqkit.graph import build, layers, to_dot, to_svg
from zmqkit.introspect import ADMIN_ROLE, INTROSPECT, ask_nodes, describe_part
from zmqkit.mesh import by_uuid, services, top_rows, topics

MakeNode = Callable[..., Node]


@pytest.fixture
def make_node(beacon_port: int) -> Iterator[MakeNode]:
    with contextlib.ExitStack() as stack:
        def make(name: str, **options: Any) -> Node:
            return stack.enter_context(Node(name, port=beacon_port, interval=0.2, **options))

        yield make


# -- pure: latency, rows, graph ------------------------------------------------------------------


def test_latency_percentiles_are_the_upper_edges_of_the_true_quantiles() -> None:
    rng = random.Random(7)
    samples = sorted(rng.lognormvariate(-7, 1.5) for _ in range(20_000))
    latency = Latency()
    for sample in samples:
        latency.record(sample)
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        true = samples[int(fraction * len(samples)) - 1]
        reported = latency.percentiles()[name]
        assert true <= reported <= max(true * 1.19, 1e-6 * 1.25), name  # a bucket is 19% wide
    assert latency.count == len(samples)
    halves = Latency(), Latency()
    for index, sample in enumerate(samples):
        halves[index % 2].record(sample)
    merged, whole = Latency.merged(halves).percentiles(), latency.percentiles()
    assert merged == pytest.approx(whole)
    assert {key: merged[key] for key in ("p50", "p90", "p99")} == {
        key: whole[key] for key in ("p50", "p90", "p99")}


def test_latency_of_nothing_is_zero_and_extremes_land_in_the_end_buckets() -> None:
    latency = Latency()
    assert latency.percentiles() == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    latency.record(0.0)
    latency.record(-1.0)  # a clock that stepped back counts as the smallest
    latency.record(1e12)
    assert latency.quantile(0.5) == pytest.approx(1.25e-6)
    assert latency.quantile(1.0) > 1e5


def _report(name: str, uuid: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"report": 1, "name": name, "uuid": uuid, "pid": 1, "uptime": 1.0,
            "parts": list(parts), "peers": [], "beacon": {"dropped-malformed": 2}}


SERVER = {"kind": "rpc.Server", "service": "calc",
          "methods": {"add": {"calls": 3, "errors": 1, "p50": 0.0001, "p99": 0.002}},
          "latency": {"p50": 0.0001, "p99": 0.002}}
PUBLISHER = {"kind": "pubsub.Publisher", "topics": {"ticks": {"published": 40}},
             "stats": {"dropped": 1}}
SUBSCRIBER = {"kind": "pubsub.Subscriber", "topics": ["ticks"], "received": 38, "gaps": 2}
CALLER = {"kind": "rpc.Client", "target": "calc", "calls": 3}
REPORTS = [
    _report("calc", "c" * 32, SERVER),
    _report("ticker", "t" * 32, PUBLISHER),
    _report("watcher", "w" * 32, SUBSCRIBER, CALLER),
    {"name": "gone", "uuid": "g" * 32, "error": "no answer in 1 s"},
]


def test_services_and_topics_are_read_from_the_parts() -> None:
    assert services(REPORTS) == [{
        "service": "calc", "nodes": [{"name": "calc", "uuid": "c" * 32}],
        "methods": {"add": {"calls": 3, "errors": 1}},
    }]
    assert topics(REPORTS) == [{
        "topic": "ticks", "publishers": [{"name": "ticker", "uuid": "t" * 32}],
        "subscribers": [{"name": "watcher", "uuid": "w" * 32}], "published": 40,
    }]


def test_two_readings_give_the_rate_of_each_topic_and_each_counted_edge() -> None:
    later = [dict(report) for report in REPORTS]
    later[1] = _report("ticker", "t" * 32, {"kind": "pubsub.Publisher",
                                             "topics": {"ticks": {"published": 80}}})
    later[2] = _report("watcher", "w" * 32, SUBSCRIBER, dict(CALLER, calls=13))
    for report in later[:3]:
        report["uptime"] = 3.0  # two seconds after the first reading, on each node's clock
    [ticks] = topics(later, REPORTS)
    assert ticks["rate"] == 20.0
    rates = {(edge.verb, edge.rate) for edge in build(later, REPORTS).edges}
    assert rates == {("publishes", 20.0), ("calls", 5.0), ("subscribes", None)}
    assert "13 calls, 5/s" in to_svg(build(later, REPORTS))


def test_top_rows_count_calls_errors_messages_and_drops_and_rates_from_two_readings() -> None:
    first = top_rows(REPORTS)
    calc, ticker, watcher, gone = first
    assert (calc["calls"], calc["errors"], calc["p99"]) == (3, 1, 0.002)
    assert (ticker["published"], ticker["dropped"]) == (40, 1 + 2)
    assert (watcher["received"], watcher["parts"]) == (38, 2)
    assert gone == {"name": "gone", "uuid": "g" * 32, "error": "no answer in 1 s"}
    later = [_report("ticker", "t" * 32,
                     {"kind": "pubsub.Publisher", "topics": {"ticks": {"published": 140}}})]
    later[0]["uptime"] = 3.0  # two seconds after the first reading, on that node's clock
    [row] = top_rows(later, by_uuid(first))
    assert row["published/s"] == 50.0


def test_graph_has_nodes_topics_and_call_edges_and_renders_as_dot_and_svg() -> None:
    graph = build(REPORTS)
    labels = {vertex.label for vertex in graph.vertices.values()}
    assert labels == {"calc", "ticker", "watcher", "ticks"}  # "gone" did not answer
    edges = {(graph.vertices[e.source].label, e.verb, graph.vertices[e.target].label, e.count)
             for e in graph.edges}
    assert edges == {("ticker", "publishes", "ticks", 40), ("ticks", "subscribes", "watcher", 0),
                     ("watcher", "calls", "calc", 3)}
    assert "serves add" in graph.vertices["node:" + "c" * 32].lines
    dot = to_dot(graph)
    assert dot.startswith("digraph zmqkit {") and '"calc' in dot and '"ticks"' in dot
    assert '-> "node:cccc' in dot
    svg = ET.fromstring(to_svg(graph))
    texts = {element.text for element in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"calc", "ticker", "watcher", "ticks", "3 calls", "40 msgs", "subscribes"} <= texts


def test_layout_puts_every_edge_of_a_chain_left_to_right_and_survives_cycles() -> None:
    graph = build([_report("a", "a" * 32, {"kind": "rpc.Client", "target": "b", "calls": 1}),
                   _report("b", "b" * 32, {"kind": "rpc.Client", "target": "a", "calls": 1},
                           PUBLISHER),
                   _report("c", "c" * 32, SUBSCRIBER)])
    columns = layers(graph)
    column_of = {key: index for index, column in enumerate(columns) for key in column}
    assert sorted(column_of) == sorted(graph.vertices)
    forward = [e for e in graph.edges if e.verb != "calls"]
    assert all(column_of[e.source] < column_of[e.target] for e in forward)
    ET.fromstring(to_svg(graph))  # a cycle (a calls b calls a) still draws


def test_a_part_that_cannot_describe_itself_is_reported_not_fatal() -> None:
    class Broken:
        def describe(self) -> dict[str, Any]:
            raise RuntimeError("no")

    class Plain:
        def stats(self) -> dict[str, int]:
            return {"dropped-full": 4}

    assert describe_part(Broken())["error"] == "RuntimeError: no"
    assert describe_part(Plain())["stats"] == {"dropped-full": 4}


# -- a node's report, asked over the wire ------------------------------------------------------


def test_a_node_reports_its_parts_and_counters_to_a_listening_node(make_node: MakeNode) -> None:
    ticker = make_node("ticker")
    look = make_node("look", announce=False)
    with pubsub.Publisher(ticker) as publisher, pubsub.Subscriber(ticker, "ticks") as subscriber:
        subscriber.wait_for_publishers(timeout=5)
        for seq in range(3):
            publisher.publish("ticks", seq)
        for _ in range(3):
            subscriber.recv(5)
        [peer] = look.wait_for("ticker", timeout=5)
        assert ADMIN_ROLE in peer.endpoints
        assert ADMIN_ROLE not in look.endpoints  # a node that only listens is not asked
        [report] = ask_nodes(look, [peer], timeout=5)
    assert (report["name"], report["uuid"]) == ("ticker", ticker.uuid.hex)
    assert report["versions"]["libzmq"] == zmq.zmq_version()
    kinds = {part["kind"]: part for part in report["parts"]}
    assert kinds["pubsub.Publisher"]["topics"] == {"ticks": {"published": 3}}
    assert kinds["pubsub.Subscriber"]["received"] == 3
    assert report["introspection"]["answered"] == 1


def test_the_admin_wire_with_raw_frames(make_node: MakeNode) -> None:
    """docs/protocol.md, "Introspection": an RPC REQUEST on the admin endpoint."""
    node = make_node("seen")
    context = zmq.Context.instance()
    with context.socket(zmq.DEALER) as dealer:
        dealer.linger = 0
        dealer.rcvtimeo = 5000
        dealer.connect(node.endpoints[ADMIN_ROLE])
        dealer.send(cbor2.dumps([1, 1, 7, INTROSPECT, [], {}]))
        version, kind, call_id, report = cbor2.loads(dealer.recv())
        assert (version, kind, call_id, report["name"]) == (1, 2, 7, "seen")
        dealer.send(cbor2.dumps([1, 1, 8, "shutdown", [], {}]))
        assert cbor2.loads(dealer.recv())[:4] == [1, 3, 8, "zmqkit.MethodNotFound"]
        dealer.send(b"\xff garbage")
        assert cbor2.loads(dealer.recv())[:4] == [1, 3, 0, "zmqkit.ProtocolError"]
        dealer.send_multipart([cbor2.dumps([1, 1, 10, INTROSPECT, [], {}]), b"more"])
        assert cbor2.loads(dealer.recv())[:4] == [1, 3, 0, "zmqkit.ProtocolError"]
        dealer.send(cbor2.dumps([1, 1, 9, INTROSPECT, [], {}]))  # and it goes on answering
        assert cbor2.loads(dealer.recv())[2] == 9


def test_a_keyed_node_answers_only_its_keyring(make_node: MakeNode) -> None:
    keyed, good, stranger = Keypair.generate(), Keypair.generate(), Keypair.generate()
    make_node("vault", keys=keyed, keyring=Keyring([good.public]))
    friend = make_node("friend", announce=False, keys=good, keyring=Keyring([keyed.public]))
    other = make_node("other", announce=False, keys=stranger, keyring=Keyring([keyed.public]))
    plain = make_node("plain", announce=False)
    [peer] = friend.wait_for("vault", timeout=5)
    assert ask_nodes(friend, [peer], timeout=5)[0]["name"] == "vault"
    assert "no answer" in ask_nodes(other, other.wait_for("vault", timeout=5), timeout=0.5)[0][
        "error"]
    refused = ask_nodes(plain, plain.wait_for("vault", timeout=5), timeout=0.5)[0]
    assert set(refused) == {"name", "uuid", "error"}
    assert refused["error"]


# -- the commands, on demo nodes ------------------------------------------------------------------


def _zmqkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmqkit", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def calc_and_ticker() -> Iterator[None]:
    """``zmqkit demo calc`` and ``zmqkit demo ticker`` on this test's beacon port."""
    demos = [subprocess.Popen([sys.executable, "-m", "zmqkit", "demo", name, "--duration", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
             for name in ("calc", "ticker")]
    try:
        yield
    finally:
        for demo in demos:
            demo.terminate()
        for demo in demos:
            demo.wait(10)


@pytest.mark.slow
def test_top_topics_services_and_graph_on_demo_nodes(calc_and_ticker: None,
                                                     tmp_path: Path) -> None:
    assert _zmqkit("call", "calc", "add", "1", "2", "--timeout", "10").stdout.strip() == "3"
    assert _zmqkit("call", "calc", "echo", '"hi"').returncode == 0
    failed = _zmqkit("call", "calc", "div", "1", "0")
    assert failed.returncode == 1 and "ZeroDivisionError" in failed.stderr

    top = _zmqkit("top", "--once", "--json", "--interval", "0.2")
    assert top.returncode == 0, top.stderr
    rows = {row["name"]: row for row in json.loads(top.stdout)}
    assert set(rows) == {"calc", "ticker"}
    assert (rows["calc"]["calls"], rows["calc"]["errors"]) == (3, 1)
    assert rows["calc"]["p99"] > 0
    assert rows["ticker"]["published"] > 0

    listed = json.loads(_zmqkit("topics", "--json", "--interval", "0.5").stdout)
    assert [topic["topic"] for topic in listed] == ["ticks"]
    assert [node["name"] for node in listed[0]["publishers"]] == ["ticker"]
    assert listed[0]["rate"] > 0
    [calc] = json.loads(_zmqkit("services", "--json").stdout)
    assert calc["service"] == "calc" and calc["methods"]["add"] == {"calls": 1, "errors": 0}
    assert calc["methods"]["div"] == {"calls": 1, "errors": 1}

    dot = _zmqkit("graph", "--dot", "--interval", "0").stdout
    assert dot.startswith("digraph") and '"calc' in dot and '"ticks"' in dot
    picture = tmp_path / "mesh.svg"
    assert _zmqkit("graph", "--svg", str(picture), "--interval", "0.3").returncode == 0
    texts = {e.text for e in ET.parse(picture).getroot().iter("{http://www.w3.org/2000/svg}text")}
    assert {"calc", "ticker", "ticks"} <= texts


# -- every part of every pattern says what it is --------------------------------------------------


def _echo(x: Any) -> Any:
    return x


PARTS: dict[str, tuple[Callable[[Node], Any], dict[str, Any]]] = {
    "rpc.Server": (lambda node: rpc.serve(node, [_echo]), {"service": "every", "methods": {
        "_echo": {"calls": 0, "errors": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0,
                  "mode": "inline"}}}),
    "rpc.Client": (lambda node: rpc.Client(node, "calc"), {"target": "calc", "calls": 0}),
    "failover.FailoverClient": (lambda node: failover.FailoverClient(node, "db"),
                                {"target": "db", "calls": 0}),
    "pubsub.Publisher": (lambda node: pubsub.Publisher(node), {"topics": {}}),
    "pubsub.Subscriber": (lambda node: pubsub.Subscriber(node, "ticks"),
                          {"topics": ["ticks"], "received": 0, "gaps": 0}),
    "survey.Surveyor": (lambda node: survey.Surveyor(node, "sensors"),
                        {"target": "sensors", "calls": 0}),
    "farm.Submitter": (lambda node: farm.Submitter(node, "jobs"), {"name": "jobs"}),
    "farm.Worker": (lambda node: farm.Worker(node, _echo, "jobs"), {"name": "jobs"}),
    "groups.Groups": (lambda node: groups.Groups(node), {"groups": []}),
    "state.State": (lambda node: state.State(node, "config"), {"name": "config"}),
}


@pytest.mark.parametrize("kind", PARTS)
def test_every_part_of_every_pattern_describes_itself(make_node: MakeNode, kind: str) -> None:
    make, expected = PARTS[kind]
    node = make_node("every")
    with make(node):
        [described] = node.report()["parts"]
    assert described["kind"] == kind
    assert {key: described[key] for key in expected} == expected
    assert "error" not in described
    cbor2.loads(cbor2.dumps(described))  # it travels as it is


def test_the_table_above_covers_every_pattern() -> None:
    import pkgutil

    import zmqkit.patterns

    patterns = {info.name for info in pkgutil.iter_modules(zmqkit.patterns.__path__) if info.ispkg}
    assert patterns == {kind.split(".")[0] for kind in PARTS}


# -- logging as the ecosystem expects -------------------------------------------------------------


def test_the_library_logs_under_zmqkit_installs_no_handler_and_is_quiet_on_the_hot_path(
        make_node: MakeNode, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    assert logging.getLogger("zmqkit").handlers == []
    assert all(not logger.handlers for name, logger in logging.Logger.manager.loggerDict.items()
               if name.startswith("zmqkit") and isinstance(logger, logging.Logger))
    node, caller = make_node("quiet"), make_node("caller")
    with rpc.serve(node, [_echo]), rpc.Client(caller, "quiet") as client, \
            pubsub.Publisher(node) as publisher, pubsub.Subscriber(caller, "t") as subscriber:
        subscriber.wait_for_publishers(timeout=5)
        client.call("_echo", 0)
        with caplog.at_level(logging.DEBUG, logger="zmqkit"):
            for seq in range(200):
                assert client.call("_echo", seq) == seq
                publisher.publish("t", seq)
            for _ in range(200):
                subscriber.recv(5)
        hot = [record for record in caplog.records if record.name.startswith("zmqkit")]
    assert hot == [], [record.getMessage() for record in hot]


def test_counted_but_untimed_events_leave_the_percentiles_and_mean_to_the_samples() -> None:
    latency = Latency()
    for _ in range(3):
        latency.record(0.001)
    latency.count += 5  # five more events, not timed
    assert (latency.count, latency.samples) == (8, 3)
    assert latency.percentiles()["mean"] == pytest.approx(0.001)
    assert 0.001 <= latency.percentiles()["p99"] <= 0.00119


def test_a_busy_inline_method_counts_every_call_and_times_a_sample(make_node: MakeNode) -> None:
    from zmqkit.patterns.rpc.server import ALWAYS_TIMED, SAMPLE

    node, caller = make_node("busy"), make_node("caller")
    rpc.serve(node, [_echo])
    calls = ALWAYS_TIMED + 10 * SAMPLE
    with rpc.Client(caller, "busy") as client:
        for seq in range(calls):
            client.call("_echo", seq)
    [server] = node.report()["parts"]
    assert server["methods"]["_echo"]["calls"] == calls
    assert server["methods"]["_echo"]["p50"] > 0
