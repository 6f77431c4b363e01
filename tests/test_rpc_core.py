"""The RPC core without sockets or clocks: routing among same-name nodes, retries, replies.

``Routes`` is fed ``Peer`` values and a ``now`` by the tests, exactly as the clients feed it from
discovery and the monotonic clock, so every routing rule is checked without ZeroMQ or sleeping.
"""

from __future__ import annotations

import uuid
from collections import Counter

import cbor2
import pytest
from zmqkit.patterns.rpc.core import STREAM_WINDOW, Call, CallCore, Phase, may_retry, outcome
from zmqkit.patterns.rpc.routes import FAILURE_PENALTY, Route, Routes

from zmqkit import BrokenError, Peer, ProtocolError, RemoteError, codec

NOW = 1000.0


def peer(number: int, *, rpc: str | None = None, name: str = "calc") -> Peer:
    """A peer with a stable UUID per ``number``, serving RPC at a port derived from it."""
    endpoints = {"rpc": rpc or f"tcp://127.0.0.1:{7000 + number}"} if rpc != "" else {}
    return Peer(
        name=name,
        uuid=uuid.UUID(int=number),
        endpoints=endpoints,
        headers={},
        seq=1,
        address="127.0.0.1",
        first_seen=0.0,
        last_seen=0.0,
    )


def routes_of(count: int) -> Routes:
    routes = Routes("calc")
    routes.sync([peer(number) for number in range(1, count + 1)])
    return routes


def uuid_of(number: int) -> uuid.UUID:
    return uuid.UUID(int=number)


# -- sync ------------------------------------------------------------------------------------------


def test_sync_adds_peers_that_serve_rpc_and_ignores_the_others() -> None:
    routes = Routes("calc")
    added, removed = routes.sync([peer(1), peer(2, rpc=""), peer(3)], )
    assert {route.uuid for route in added} == {uuid_of(1), uuid_of(3)}
    assert removed == []
    assert set(routes.targets) == {uuid_of(1), uuid_of(3)}
    assert routes.targets[uuid_of(3)].endpoint == "tcp://127.0.0.1:7003"


def test_sync_removes_gone_peers_and_keeps_the_state_of_the_rest() -> None:
    routes = routes_of(3)
    kept = routes.targets[uuid_of(1)]
    routes.started(kept)
    added, removed = routes.sync([peer(1), peer(3)])
    assert added == []
    assert [route.uuid for route in removed] == [uuid_of(2)]
    assert set(routes.targets) == {uuid_of(1), uuid_of(3)}
    assert routes.targets[uuid_of(1)] is kept and kept.pending == 1


def test_sync_replaces_a_route_whose_endpoint_changed() -> None:
    routes = routes_of(1)
    old = routes.targets[uuid_of(1)]
    routes.started(old)
    added, removed = routes.sync([peer(1, rpc="tcp://127.0.0.1:9999")])
    assert removed == [old]
    assert [route.endpoint for route in added] == ["tcp://127.0.0.1:9999"]
    new = routes.targets[uuid_of(1)]
    assert new is not old and new.pending == 0


def test_sync_drops_a_peer_that_withdrew_rpc() -> None:
    routes = routes_of(2)
    _, removed = routes.sync([peer(1), peer(2, rpc="")])
    assert [route.uuid for route in removed] == [uuid_of(2)]
    assert set(routes.targets) == {uuid_of(1)}


def test_sync_with_no_peers_empties_the_routes() -> None:
    routes = routes_of(2)
    added, removed = routes.sync([])
    assert added == [] and len(removed) == 2
    assert routes.targets == {}
    assert routes.pick(NOW) is None


# -- pick ------------------------------------------------------------------------------------------


def test_pick_with_no_routes_is_none() -> None:
    assert Routes("calc").pick(NOW) is None


def test_pick_prefers_the_route_with_fewest_pending_calls() -> None:
    routes = routes_of(3)
    one, two, three = (routes.targets[uuid_of(n)] for n in (1, 2, 3))
    for route in (one, one, two, three, three):
        routes.started(route)
    assert routes.pick(NOW) is two
    routes.finished(one)
    routes.finished(one)
    assert routes.pick(NOW) is one


def test_pick_goes_round_robin_among_equals() -> None:
    routes = routes_of(3)
    order = []
    for _ in range(9):
        route = routes.pick(NOW)
        assert route is not None
        routes.started(route)
        routes.finished(route)
        order.append(route.uuid)
    assert Counter(order) == {uuid_of(1): 3, uuid_of(2): 3, uuid_of(3): 3}
    # a strict rotation: each window of three calls visits every node once
    for start in range(0, 9, 3):
        assert len(set(order[start:start + 3])) == 3
    assert order[:3] == order[3:6] == order[6:9]


def test_pick_spreads_concurrent_calls_by_least_pending() -> None:
    routes = routes_of(3)
    for _ in range(9):  # nine calls in flight at once, none finished
        route = routes.pick(NOW)
        assert route is not None
        routes.started(route)
    assert sorted(route.pending for route in routes.targets.values()) == [3, 3, 3]


def test_recently_failed_route_is_picked_last() -> None:
    routes = routes_of(2)
    one, two = routes.targets[uuid_of(1)], routes.targets[uuid_of(2)]
    routes.started(one)
    routes.failed(one, NOW)
    for _ in range(3):  # two stays first even as its pending grows past one's
        assert routes.pick(NOW + 1) is two
        routes.started(two)
    assert one.pending == 0 and two.pending == 3


def test_failed_route_is_still_picked_when_nothing_else_is_left() -> None:
    routes = routes_of(2)
    one = routes.targets[uuid_of(1)]
    routes.failed(one, NOW)
    assert routes.pick(NOW, exclude=[uuid_of(2)]) is one
    routes.failed(routes.targets[uuid_of(2)], NOW)
    assert routes.pick(NOW) is not None


def test_failure_penalty_wears_off() -> None:
    routes = routes_of(2)
    one, two = routes.targets[uuid_of(1)], routes.targets[uuid_of(2)]
    routes.started(two)  # two is busier than one
    routes.failed(one, NOW)
    assert routes.pick(NOW + FAILURE_PENALTY - 0.01) is two
    assert routes.pick(NOW + FAILURE_PENALTY + 0.01) is one


def test_unreachable_route_is_picked_last_and_keeps_its_pending_count() -> None:
    routes = routes_of(2)
    one, two = routes.targets[uuid_of(1)], routes.targets[uuid_of(2)]
    routes.started(one)
    routes.started(two)  # routed there, but it never left
    routes.unreachable(two, NOW)
    assert two.pending == 0 and one.pending == 1
    assert routes.pick(NOW) is one


def test_exclude_skips_routes_and_none_when_all_are_excluded() -> None:
    routes = routes_of(3)
    picked = routes.pick(NOW, exclude=[uuid_of(1), uuid_of(2)])
    assert picked is not None and picked.uuid == uuid_of(3)
    assert routes.pick(NOW, exclude=(uuid_of(n) for n in (1, 2, 3))) is None
    assert routes.pick(NOW, exclude=[uuid_of(99)]) is not None


# -- pending counts --------------------------------------------------------------------------------


def test_started_finished_failed_keep_pending_and_last_used() -> None:
    routes = routes_of(2)
    one, two = routes.targets[uuid_of(1)], routes.targets[uuid_of(2)]
    routes.started(one)
    routes.started(two)
    routes.started(one)
    assert (one.pending, two.pending) == (2, 1)
    assert one.last_used > two.last_used > 0
    routes.finished(one)
    routes.failed(one, NOW)
    assert one.pending == 0 and one.failed_at == NOW
    routes.finished(one)  # a late, duplicate answer never drives the count negative
    routes.failed(two, NOW)
    routes.failed(two, NOW)
    assert one.pending == 0 and two.pending == 0


def test_a_new_route_starts_fresh() -> None:
    route = Route(uuid_of(1), "tcp://127.0.0.1:1")
    assert route.pending == 0 and route.last_used == 0 and route.failed_at == float("-inf")


# -- may_retry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idempotent", "sent", "expected"),
    [(False, False, True), (True, False, True), (True, True, True), (False, True, False)],
)
def test_may_retry(idempotent: bool, sent: bool, expected: bool) -> None:
    assert may_retry(idempotent=idempotent, sent=sent) is expected


# -- outcome ---------------------------------------------------------------------------------------


def test_outcome_of_a_reply_is_its_result() -> None:
    value = {"sum": [1, 2.5, "x"]}
    assert outcome(codec.decode(codec.encode_reply(4, value))) == value
    assert outcome(codec.decode(codec.encode_reply(4, None))) is None


def test_outcome_of_a_stream_item_and_end() -> None:
    assert outcome(codec.decode(codec.encode_stream_item(9, b"\x00\x01"))) == b"\x00\x01"
    assert outcome(codec.decode(codec.encode_stream_end(9))) is None


def test_outcome_of_an_error_raises_remote_error_with_its_parts() -> None:
    frame = codec.encode_error(3, "ZeroDivisionError", "division by zero", "Traceback...")
    message = codec.decode(frame)
    with pytest.raises(RemoteError) as caught:
        outcome(message)
    error = caught.value
    assert (error.type_name, error.message, error.traceback) == (
        "ZeroDivisionError", "division by zero", "Traceback...",
    )
    assert str(error) == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    "frame",
    [codec.encode_request(1, "add", [1, 2], {}), codec.encode_cancel(1)],
    ids=["request", "cancel"],
)
def test_outcome_of_a_non_reply_is_a_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match="expected a reply"):
        outcome(codec.decode(frame))


# -- a stream's flow control in the call core (docs/protocol.md 6.7), without sockets --------------


def streaming(window_items: int = 0) -> tuple[CallCore, Call, uuid.UUID]:
    """A core with one node, and a stream call sent to it."""
    core = CallCore("calc", routes_of(1))
    core.sync([peer(1, rpc="tcp://127.0.0.1:1")], now=0.0)
    call = core.begin("count", (10,), {}, False, 5.0, 0.0, stream=True)
    target = core.route(call, 0.0)
    assert target is not None
    core.sent(call, target, 0.0)
    return core, call, target.uuid


def flow_item(index: int, item: object = None) -> bytes:
    return cbor2.dumps([1, 10, 1, index, item])


def test_a_stream_call_asks_for_zmqkit_stream_with_its_window() -> None:
    _, call, _ = streaming()
    assert cbor2.loads(call.frame) == [1, 1, 1, "zmqkit.stream", ["count", [10], {},
                                                                  STREAM_WINDOW], {}]


def test_a_stream_grants_credit_as_its_reader_takes_items() -> None:
    core, call, node = streaming()
    grants = []
    for index in range(STREAM_WINDOW):
        assert core.receive(node, flow_item(index, index), now=1.0) is call
        grants.append(core.took(call, 1))
    first = STREAM_WINDOW // 2
    assert grants[first - 1] == first + STREAM_WINDOW  # half the window taken: the next half
    assert [g for g in grants if g is not None] == [first + STREAM_WINDOW, STREAM_WINDOW * 2]
    assert call.items == list(range(STREAM_WINDOW))


@pytest.mark.parametrize(
    ("indexes", "why"),
    [([0, 2], "item 2 came where 1 was due"), ([0, 0], "item 0 came where 1 was due"),
     (list(range(STREAM_WINDOW + 1)), f"beyond the credit given ({STREAM_WINDOW})")],
    ids=["skipped", "repeated", "beyond-the-credit"],
)
def test_a_broken_stream_ends_with_broken_error(indexes: list[int], why: str) -> None:
    core, call, node = streaming()
    for index in indexes:
        core.receive(node, flow_item(index), now=1.0)
    assert isinstance(call.error, BrokenError) and why in str(call.error)


def test_a_stream_end_must_count_the_items_that_came() -> None:
    core, call, node = streaming()
    core.receive(node, flow_item(0), now=1.0)
    core.receive(node, cbor2.dumps([1, 11, 1, 1]), now=1.0)
    assert call.error is None and call.result == [None]
    core, call, node = streaming()
    core.receive(node, flow_item(0), now=1.0)
    core.receive(node, cbor2.dumps([1, 11, 1, 2]), now=1.0)
    assert isinstance(call.error, BrokenError) and "1 arrived" in str(call.error)


def test_a_stream_whose_server_knows_no_zmqkit_stream_sends_the_plain_request() -> None:
    core, call, node = streaming()
    core.receive(node, codec.encode_error(1, "zmqkit.MethodNotFound", "no zmqkit.stream"))
    assert call.phase is Phase.ROUTING and cbor2.loads(call.frame) == [1, 1, 1, "count", [10], {}]
    core.receive(node, codec.encode_stream_item(1, "a"), now=1.0)  # an older server's items
    assert core.took(call, 1) is None, "no CREDIT to a stream without flow control"
    core.receive(node, codec.encode_error(1, "zmqkit.MethodNotFound", "no count"))
    assert isinstance(call.error, RemoteError), "a second MethodNotFound ends the call"


def test_a_paused_reader_is_timed_from_when_it_waits_again() -> None:
    core, call, node = streaming()
    core.receive(node, flow_item(0), now=1.0)
    assert call.deadline == 6.0
    core.waiting(call, 100.0)  # the reader took a minute and a half, then waits again
    assert not core.expire(call, 104.0) and core.expire(call, 105.0)
