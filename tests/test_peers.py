"""The peer table, driven by a fake clock: plain floats for ``now``, no sleeping."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqkit.codec import BeaconKind, encode_beacon
from zmqkit.errors import ProtocolError
from zmqkit.peers import EventKind, Peer, PeerEvent, PeerTable

ME = uuid.UUID(int=1)
A = uuid.UUID(int=0xA)
B = uuid.UUID(int=0xB)
C = uuid.UUID(int=0xC)
RPC = {"rpc": "tcp://127.0.0.1:5555"}
RPC2 = {"rpc": "tcp://127.0.0.1:6666"}
ADDR = "127.0.0.1"


def hello(
    node: uuid.UUID,
    seq: int = 0,
    name: str = "calc",
    endpoints: Mapping[str, str] = RPC,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    return encode_beacon(BeaconKind.HELLO, name, node, seq, endpoints, headers or {})


def goodbye(node: uuid.UUID, seq: int = 0, name: str = "calc") -> bytes:
    return encode_beacon(BeaconKind.GOODBYE, name, node, seq, RPC, {})


def kinds(events: list[PeerEvent]) -> list[EventKind]:
    return [event.kind for event in events]


def snapshot(table: PeerTable) -> tuple[Any, ...]:
    return (table.version, len(table), table.peers(), table.next_expiry())


# -- joining -------------------------------------------------------------------------------------


def test_a_new_table_is_empty() -> None:
    table = PeerTable(own_uuid=ME)
    assert len(table) == 0
    assert table.peers() == []
    assert table.version == 0
    assert table.next_expiry() is None
    assert table.expire(now=1e9) == []


def test_a_first_hello_joins_the_peer() -> None:
    table = PeerTable(own_uuid=ME, expiry=3.0)
    events = table.feed(hello(A, seq=4, headers={"v": "1"}), "127.0.0.7", now=100.0)
    assert kinds(events) == [EventKind.JOINED]
    peer = events[0].peer
    assert peer == Peer(
        name="calc",
        uuid=A,
        endpoints=RPC,
        headers={"v": "1"},
        seq=4,
        address="127.0.0.7",
        first_seen=100.0,
        last_seen=100.0,
    )
    assert table.peers() == [peer]
    assert len(table) == 1
    assert table.version == 1


def test_event_and_peer_helpers() -> None:
    table = PeerTable()
    [event] = table.feed(hello(A), ADDR, now=10.0)
    assert event.peer.age(now=12.5) == 2.5
    text = str(event)
    assert "calc" in text and "joined" in text and A.hex[:8] in text


# -- hearing again -------------------------------------------------------------------------------


def test_the_same_beacon_again_refreshes_without_an_event() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A, seq=1), ADDR, now=10.0)
    assert table.feed(hello(A, seq=1), "127.0.0.9", now=12.0) == []
    [peer] = table.peers()
    assert peer.last_seen == 12.0
    assert peer.first_seen == 10.0
    assert peer.address == "127.0.0.9"
    assert table.version == 1
    assert table.next_expiry() == 15.0


def test_a_higher_seq_with_new_endpoints_is_an_update() -> None:
    table = PeerTable()
    table.feed(hello(A, seq=1), ADDR, now=10.0)
    events = table.feed(hello(A, seq=2, endpoints=RPC2), ADDR, now=11.0)
    assert kinds(events) == [EventKind.UPDATED]
    assert events[0].peer.endpoints == RPC2
    assert events[0].peer.seq == 2
    assert events[0].peer.first_seen == 10.0
    assert events[0].peer.last_seen == 11.0
    assert table.peers() == [events[0].peer]
    assert table.version == 2


def test_a_higher_seq_with_new_headers_is_an_update() -> None:
    table = PeerTable()
    table.feed(hello(A, seq=1, headers={"load": "1"}), ADDR, now=10.0)
    events = table.feed(hello(A, seq=2, headers={"load": "9"}), ADDR, now=11.0)
    assert kinds(events) == [EventKind.UPDATED]
    assert table.peers()[0].headers == {"load": "9"}
    assert table.version == 2


def test_a_higher_seq_with_a_new_name_is_an_update() -> None:
    table = PeerTable()
    table.feed(hello(A, seq=1, name="calc"), ADDR, now=10.0)
    assert kinds(table.feed(hello(A, seq=2, name="calc2"), ADDR, now=11.0)) == [EventKind.UPDATED]
    assert table.peers("calc") == []
    assert [peer.uuid for peer in table.peers("calc2")] == [A]


def test_a_higher_seq_with_the_same_content_refreshes_without_an_event() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A, seq=1), ADDR, now=10.0)
    assert table.feed(hello(A, seq=5), ADDR, now=12.0) == []
    [peer] = table.peers()
    assert peer.seq == 5
    assert peer.last_seen == 12.0
    assert table.version == 1
    assert table.expire(now=14.9) == []  # refreshed at 12, so not gone at 10 + 3
    assert kinds(table.expire(now=15.0)) == [EventKind.EXPIRED]


def test_a_stale_seq_is_ignored() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A, seq=5), ADDR, now=10.0)
    assert table.feed(hello(A, seq=4, endpoints=RPC2), "127.0.0.9", now=11.0) == []
    [peer] = table.peers()
    assert peer.endpoints == RPC
    assert peer.seq == 5
    assert peer.address == ADDR
    assert peer.last_seen == 10.0  # a late or replayed beacon is no sign of life
    assert table.version == 1
    assert kinds(table.expire(now=13.0)) == [EventKind.EXPIRED]


def test_an_update_after_a_stale_beacon_still_works() -> None:
    table = PeerTable()
    table.feed(hello(A, seq=5), ADDR, now=10.0)
    table.feed(hello(A, seq=1, endpoints=RPC2), ADDR, now=11.0)
    events = table.feed(hello(A, seq=6, endpoints=RPC2), ADDR, now=12.0)
    assert kinds(events) == [EventKind.UPDATED]
    assert events[0].peer.endpoints == RPC2


# -- leaving -------------------------------------------------------------------------------------


def test_goodbye_from_a_known_peer_is_left() -> None:
    table = PeerTable()
    [joined] = table.feed(hello(A, seq=3), ADDR, now=10.0)
    table.feed(hello(B), ADDR, now=10.0)
    events = table.feed(goodbye(A, seq=4), ADDR, now=11.0)
    assert kinds(events) == [EventKind.LEFT]
    assert events[0].peer == joined.peer
    assert [peer.uuid for peer in table.peers()] == [B]
    assert table.version == 3


def test_goodbye_from_an_unknown_peer_does_nothing() -> None:
    table = PeerTable()
    table.feed(hello(B), ADDR, now=10.0)
    before = snapshot(table)
    assert table.feed(goodbye(A), ADDR, now=11.0) == []
    assert snapshot(table) == before


def test_a_second_goodbye_does_nothing() -> None:
    table = PeerTable()
    table.feed(hello(A), ADDR, now=10.0)
    assert kinds(table.feed(goodbye(A), ADDR, now=11.0)) == [EventKind.LEFT]
    version = table.version
    assert table.feed(goodbye(A), ADDR, now=11.5) == []
    assert table.version == version
    assert len(table) == 0


def test_a_peer_that_left_and_comes_back_joins_again() -> None:
    table = PeerTable()
    table.feed(hello(A, seq=1), ADDR, now=10.0)
    table.feed(goodbye(A, seq=2), ADDR, now=11.0)
    events = table.feed(hello(A, seq=3), ADDR, now=12.0)
    assert kinds(events) == [EventKind.JOINED]
    assert events[0].peer.first_seen == 12.0


# -- expiry --------------------------------------------------------------------------------------


def test_a_peer_expires_at_exactly_the_expiry_time_and_not_before() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A), ADDR, now=100.0)
    assert table.next_expiry() == 103.0
    assert table.expire(now=100.0) == []
    assert table.expire(now=102.999999) == []
    assert len(table) == 1
    assert table.version == 1
    events = table.expire(now=103.0)
    assert kinds(events) == [EventKind.EXPIRED]
    assert events[0].peer.uuid == A
    assert len(table) == 0
    assert table.version == 2
    assert table.next_expiry() is None
    assert table.expire(now=200.0) == []
    assert table.version == 2


def test_expiry_follows_the_configured_time() -> None:
    table = PeerTable(expiry=0.5)
    table.feed(hello(A), ADDR, now=1.0)
    assert table.next_expiry() == 1.5
    assert table.expire(now=1.49) == []
    assert kinds(table.expire(now=1.5)) == [EventKind.EXPIRED]


def test_next_expiry_is_the_earliest_of_all_peers() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A), ADDR, now=10.0)
    table.feed(hello(B), ADDR, now=11.0)
    assert table.next_expiry() == 13.0
    table.feed(hello(A), ADDR, now=12.5)  # A refreshes: B is now the first to go
    assert table.next_expiry() == 14.0
    [expired] = table.expire(now=14.0)
    assert expired.peer.uuid == B
    assert table.next_expiry() == 15.5


def test_expire_at_next_expiry_always_drops_someone() -> None:
    table = PeerTable(expiry=3.0)
    for index, node in enumerate((A, B, C)):
        table.feed(hello(node), ADDR, now=10.0 + index * 0.7)
    gone: list[uuid.UUID] = []
    while (when := table.next_expiry()) is not None:
        events = table.expire(now=when)
        assert events, f"expire({when}) dropped nobody"
        gone += [event.peer.uuid for event in events]
    assert gone == [A, B, C]


def test_several_peers_expire_together() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A), ADDR, now=10.0)
    table.feed(hello(B), ADDR, now=10.0)
    table.feed(hello(C), ADDR, now=12.0)
    version = table.version
    events = table.expire(now=13.5)
    assert kinds(events) == [EventKind.EXPIRED, EventKind.EXPIRED]
    assert {event.peer.uuid for event in events} == {A, B}
    assert [peer.uuid for peer in table.peers()] == [C]
    assert table.version > version


def test_a_restart_with_the_same_name_and_a_new_uuid_is_a_new_peer() -> None:
    table = PeerTable(expiry=3.0)
    table.feed(hello(A, seq=50), ADDR, now=10.0)
    # the process restarts: same name, fresh UUID, its seq starts again from 0
    events = table.feed(hello(B, seq=0, endpoints=RPC2), ADDR, now=11.0)
    assert kinds(events) == [EventKind.JOINED]
    assert events[0].peer.uuid == B
    assert {peer.uuid for peer in table.peers("calc")} == {A, B}
    table.feed(hello(B, seq=1, endpoints=RPC2), ADDR, now=12.5)
    [expired] = table.expire(now=13.0)
    assert expired.kind is EventKind.EXPIRED
    assert expired.peer.uuid == A
    [survivor] = table.peers("calc")
    assert survivor.uuid == B
    assert survivor.endpoints == RPC2


# -- own beacons, filtering, versions -------------------------------------------------------------


def test_our_own_beacons_are_ignored() -> None:
    table = PeerTable(own_uuid=ME)
    assert table.feed(hello(ME), ADDR, now=1.0) == []
    assert table.feed(hello(ME, seq=2, endpoints=RPC2), ADDR, now=2.0) == []
    assert table.feed(goodbye(ME), ADDR, now=3.0) == []
    assert len(table) == 0
    assert table.version == 0
    assert table.next_expiry() is None


def test_without_an_own_uuid_every_beacon_counts() -> None:
    table = PeerTable()
    assert kinds(table.feed(hello(ME), ADDR, now=1.0)) == [EventKind.JOINED]


def test_peers_filters_by_name_oldest_first() -> None:
    table = PeerTable()
    table.feed(hello(A, name="calc"), ADDR, now=1.0)
    table.feed(hello(B, name="chat"), ADDR, now=2.0)
    table.feed(hello(C, name="calc"), ADDR, now=3.0)
    assert [peer.uuid for peer in table.peers()] == [A, B, C]
    assert [peer.uuid for peer in table.peers("calc")] == [A, C]
    assert [peer.uuid for peer in table.peers("chat")] == [B]
    assert table.peers("nobody") == []
    assert table.peers("cal") == []
    table.feed(hello(A, name="calc"), ADDR, now=4.0)  # a refresh keeps A first
    assert [peer.uuid for peer in table.peers("calc")] == [A, C]


def test_version_grows_on_join_update_leave_and_expiry_only() -> None:
    table = PeerTable(expiry=3.0)
    versions = [table.version]

    def step(datagram: bytes | None, now: float) -> None:
        if datagram is None:
            table.expire(now)
        else:
            table.feed(datagram, ADDR, now)
        versions.append(table.version)

    step(hello(A, seq=1), 1.0)  # join
    step(hello(A, seq=1), 1.5)  # refresh
    step(hello(A, seq=2), 2.0)  # refresh, new seq, same content
    step(hello(A, seq=3, endpoints=RPC2), 2.5)  # update
    step(hello(A, seq=1), 2.6)  # stale
    step(hello(B), 3.0)  # join
    step(goodbye(B), 3.5)  # leave
    step(None, 4.0)  # nothing expires
    step(None, 5.5)  # A expires
    assert versions == [0, 1, 1, 1, 2, 2, 3, 4, 4, 5]


# -- garbage -------------------------------------------------------------------------------------

GARBAGE = [
    b"",
    b"garbage",
    b"ZKB",
    b"ZKB\x01",
    b"ZKB\x02" + hello(A)[4:],
    hello(A)[:-1],
    hello(A)[:10],
    b"ZKB\x01" + bytes(1200),
]


@pytest.mark.parametrize("datagram", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_raises_protocol_error_and_leaves_the_table_unchanged(datagram: bytes) -> None:
    table = PeerTable(own_uuid=ME, expiry=3.0)
    table.feed(hello(A), ADDR, now=1.0)
    table.feed(hello(B, seq=7), ADDR, now=2.0)
    before = snapshot(table)
    with pytest.raises(ProtocolError):
        table.feed(datagram, ADDR, now=2.5)
    assert snapshot(table) == before
    assert table.peers()[1].last_seen == 2.0


# -- a model check: random sequences of beacons and expiries --------------------------------------

NODES = [A, B, C]
operations = st.lists(
    st.tuples(
        st.sampled_from(["hello", "goodbye", "expire"]),
        st.sampled_from([*NODES, ME]),
        st.integers(0, 4),  # seq
        st.sampled_from([RPC, RPC2]),
        st.floats(0.0, 2.0),  # time step
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_table_agrees_with_a_simple_model(ops: list[tuple[Any, ...]]) -> None:
    expiry = 3.0
    table = PeerTable(own_uuid=ME, expiry=expiry)
    # model: uuid -> (seq, endpoints, last_seen)
    model: dict[uuid.UUID, tuple[int, Mapping[str, str], float]] = {}
    now = 0.0
    for operation, node, seq, endpoints, step in ops:
        now += step
        version = table.version
        if operation == "expire":
            events = table.expire(now)
            gone = {n for n, (_, _, seen) in model.items() if now - seen >= expiry}
            assert kinds(events) == [EventKind.EXPIRED] * len(gone)
            assert {event.peer.uuid for event in events} == gone
            for n in gone:
                del model[n]
            assert table.version == version + (1 if gone else 0)
        elif operation == "goodbye":
            events = table.feed(goodbye(node, seq), ADDR, now)
            if node in model and node != ME:
                assert kinds(events) == [EventKind.LEFT]
                del model[node]
                assert table.version > version
            else:
                assert events == []
                assert table.version == version
        else:
            events = table.feed(hello(node, seq, endpoints=endpoints), ADDR, now)
            if node == ME:
                assert events == []
            elif node not in model:
                assert kinds(events) == [EventKind.JOINED]
                model[node] = (seq, endpoints, now)
            elif seq < model[node][0]:
                assert events == []
            else:
                changed = seq > model[node][0] and endpoints != model[node][1]
                assert kinds(events) == ([EventKind.UPDATED] if changed else [])
                if seq > model[node][0]:
                    model[node] = (seq, endpoints, now)
                else:
                    model[node] = (seq, model[node][1], now)
            assert table.version == version + len(events)
        assert {peer.uuid: (peer.seq, peer.endpoints, peer.last_seen) for peer in table.peers()} \
            == model
        expected_next = min((seen for _, _, seen in model.values()), default=None)
        assert table.next_expiry() == (None if expected_next is None else expected_next + expiry)
