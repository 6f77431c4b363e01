"""The contacts, pure: who gets unicast beacons, peer exchange and its bounds, with a fake clock.

No sockets: ``Contacts`` is told what the beacon hears and asked what to send, at a ``now``
that the test moves by hand.
"""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from zmqkit.contacts import (
    ANSWER_BURST,
    EARLY_BURST,
    EXCHANGE_BURST,
    EXCHANGE_EVERY,
    MAX_CANDIDATES,
    PEERS_PER_INTERVAL,
    PROBE_BURST,
    PROBES,
    Contacts,
    RateLimit,
    scaled_interval,
)

HERE = ipaddress.IPv4Network("198.18.1.0/24")
A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def contacts(**options: object) -> Contacts:
    return Contacts(1.0, 3.0, network=HERE, **options)  # type: ignore[arg-type]


def test_a_peer_heard_by_broadcast_gets_no_unicast_beacons() -> None:
    book = contacts()
    assert not book.heard(A, ("198.18.1.5", 4000), broadcast=True, now=0.0)
    assert book.targets(0.0) == []


def test_a_peer_heard_only_by_unicast_gets_unicast_beacons_until_it_goes() -> None:
    book = contacts()
    assert book.heard(A, ("198.18.1.5", 4000), broadcast=False, now=0.0), "a new unicast peer"
    assert not book.heard(A, ("198.18.1.5", 4000), broadcast=False, now=1.0), "not new again"
    assert book.targets(1.0) == [("198.18.1.5", 4000)]
    book.forget(A)
    assert book.targets(1.0) == []


def test_an_answer_from_a_neighbour_does_not_make_it_a_unicast_peer() -> None:
    book = contacts()
    book.heard(A, ("198.18.1.5", 4000), broadcast=True, now=0.0)
    assert not book.heard(A, ("198.18.1.5", 4000), broadcast=False, now=0.5)  # its answer
    assert book.targets(0.5) == []
    # once its broadcasts stop coming (a link that drops them), unicast takes over
    assert book.targets(3.6) == [("198.18.1.5", 4000)]


def test_a_peer_outside_the_broadcast_network_is_a_unicast_peer_whatever_else() -> None:
    book = contacts()
    book.heard(A, ("198.18.2.7", 4000), broadcast=True, now=0.0)  # a directed broadcast
    book.heard(A, ("198.18.2.7", 4000), broadcast=False, now=0.1)
    assert book.targets(0.1) == [("198.18.2.7", 4000)]


def test_seeds_are_targets_with_every_address_and_changes_are_reported() -> None:
    book = contacts()
    assert book.set_seed("b:47474", {("198.18.2.2", 47474), ("198.18.2.3", 47474)}) == [
        ("198.18.2.2", 47474), ("198.18.2.3", 47474)]
    assert book.set_seed("b:47474", {("198.18.2.3", 47474), ("198.18.2.4", 47474)}) == [
        ("198.18.2.4", 47474)]
    assert book.targets(0.0) == [("198.18.2.3", 47474), ("198.18.2.4", 47474)]
    assert book.is_seed_host("198.18.2.4") and not book.is_seed_host("198.18.2.2")


def test_a_new_unicast_peer_gets_a_peer_list_at_once_without_its_own_address() -> None:
    book = contacts()
    book.heard(B, ("198.18.1.6", 4001), broadcast=True, now=0.0)
    book.heard(A, ("198.18.2.5", 4000), broadcast=False, now=0.0)
    known = [("198.18.1.6", 4001), ("198.18.2.5", 4000)]
    assert book.exchange(known, 0.0) == [(("198.18.2.5", 4000), [("198.18.1.6", 4001)])]
    assert book.exchange(known, 1.0) == [], "the next exchange is EXCHANGE_EVERY intervals away"
    assert book.exchange(known, EXCHANGE_EVERY * 1.0) != []


def test_a_newcomer_is_passed_on_soon_and_first() -> None:
    book = contacts()
    book.heard(A, ("198.18.2.5", 4000), broadcast=False, now=0.0)
    many = [(f"198.18.1.{i}", 5000) for i in range(1, 101)]
    book.exchange([("198.18.2.5", 4000), *many], 0.0)
    book.joined(("198.18.1.200", 5000))
    [(target, addresses)] = book.exchange([("198.18.2.5", 4000), *many, ("198.18.1.200", 5000)],
                                          0.1)
    assert target == ("198.18.2.5", 4000)
    assert addresses[0] == ("198.18.1.200", 5000) and len(addresses) == 48


def test_every_known_address_reaches_a_unicast_peer_within_a_few_exchanges() -> None:
    book = contacts()
    book.heard(A, ("198.18.2.5", 4000), broadcast=False, now=0.0)
    many = [(f"198.18.1.{i}", 5000) for i in range(1, 201)]
    passed: set[tuple[str, int]] = set()
    for turn in range(5):
        for _, addresses in book.exchange(many, turn * EXCHANGE_EVERY * 1.0):
            passed.update(addresses)
    assert passed == set(many)


def test_peer_lists_stay_within_their_budget() -> None:
    book = contacts()
    for n in range(100):
        book.heard(uuid.UUID(int=1000 + n), (f"198.18.3.{n}", 4000), broadcast=False, now=0.0)
    lists = book.exchange([("198.18.9.9", 1)], 0.0)
    assert len(lists) == EXCHANGE_BURST
    assert book.exchange([("198.18.9.9", 1)], 0.5) == [], "the rest waits for the budget"
    assert 0 < len(book.exchange([("198.18.9.9", 1)], 1.0)) <= EXCHANGE_BURST


def test_candidates_skip_the_known_our_own_the_loopback_and_the_failed() -> None:
    book = contacts(own={("198.18.1.1", 4000)})
    offered = [("198.18.1.1", 4000), ("198.18.1.2", 4000), ("127.0.0.1", 4000),
               ("198.18.1.3", 4000), ("198.18.1.3", 4000)]
    assert book.offer(offered, known={("198.18.1.2", 4000)}, now=0.0) == 1
    assert list(book.candidates) == [("198.18.1.3", 4000)]


def test_a_candidate_is_probed_a_few_times_then_dropped_and_not_retried_soon() -> None:
    book = contacts()
    book.offer([("198.18.2.9", 4000)], known=set(), now=0.0)
    probes = []
    for second in range(10):
        probes += book.probes_due(float(second))
    assert probes == [("198.18.2.9", 4000)] * PROBES
    assert not book.candidates
    assert book.offer([("198.18.2.9", 4000)], known=set(), now=20.0) == 0, "failed lately"
    assert book.offer([("198.18.2.9", 4000)], known=set(), now=100.0) == 1


def test_a_candidate_that_answers_is_no_longer_probed() -> None:
    book = contacts()
    book.offer([("198.18.2.9", 4000)], known=set(), now=0.0)
    assert book.probes_due(0.0) == [("198.18.2.9", 4000)]
    book.heard(C, ("198.18.2.9", 4000), broadcast=False, now=0.2)
    assert book.probes_due(5.0) == [] and not book.candidates


def test_probes_and_candidates_are_bounded_whatever_is_offered() -> None:
    book = contacts()
    flood = [(f"198.18.{n // 250}.{n % 250 + 1}", 4000) for n in range(5000)]
    assert book.offer(flood, known=set(), now=0.0) == MAX_CANDIDATES
    assert len(book.probes_due(0.0)) == PROBE_BURST
    assert len(book.probes_due(0.5)) <= PROBE_BURST // 2 + 1  # half an interval's refill
    sent = sum(len(book.probes_due(t / 10)) for t in range(6, 101))
    assert sent <= PROBE_BURST * 10  # the refill over ten intervals


def test_the_answer_budget_is_a_burst_then_a_rate() -> None:
    limit = RateLimit(ANSWER_BURST, ANSWER_BURST / 2.0)
    assert sum(limit.allow(0.0) for _ in range(1000)) == ANSWER_BURST
    assert sum(limit.allow(1.0) for _ in range(1000)) == ANSWER_BURST // 2
    assert not limit.allow(1.0)


@pytest.mark.parametrize(
    ("peers", "factor"),
    [(0, 1), (PEERS_PER_INTERVAL, 1), (PEERS_PER_INTERVAL + 1, 2), (1000, 4), (10_000, 64)],
)
def test_the_interval_doubles_as_the_mesh_doubles(peers: int, factor: int) -> None:
    assert scaled_interval(1.0, peers, 1.0) == factor


def test_the_interval_shrinks_back_with_hysteresis() -> None:
    stretched = scaled_interval(1.0, 3 * PEERS_PER_INTERVAL, 1.0)
    assert stretched == 4.0
    assert scaled_interval(1.0, PEERS_PER_INTERVAL * 3 // 2, stretched) == 4.0, "no flapping"
    assert scaled_interval(1.0, PEERS_PER_INTERVAL, stretched) == 2.0
    assert scaled_interval(1.0, 10, stretched) == 1.0


def test_early_broadcasts_slow_down_with_a_stretched_interval() -> None:
    book = contacts()
    assert sum(book.early.allow(0.0) for _ in range(10)) == EARLY_BURST
    book.stretch(8.0)
    assert sum(book.early.allow(t / 10) for t in range(1, 40)) == 0, "none within 4 s"
    assert book.early.allow(4.1)
