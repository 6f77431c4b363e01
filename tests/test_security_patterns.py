"""One security test over every pattern: with keys and a keyring, only the ring gets in.

Each pattern is described once, as a ``Scenario``: how a keyed node serves it, how a peer uses it
(``use``: returns once the exchange went through, or raises the error the pattern's contract
gives), which error a refused peer gets, and what would show that something crossed anyway
(``breaches``). Every test below runs over every scenario, so a pattern added to
``zmqkit.patterns`` only needs a scenario here (``test_the_registry_covers_every_pattern`` fails
until it has one) to get every test.

The cast: the ``keyed`` node, whose ring holds ``good``'s key; ``good``, which trusts the keyed
node's key; a ``stranger`` with keys of its own that trusts the keyed node but is not in its ring;
a ``plain`` node with no keys at all. For each pattern:

- a peer in the keyring is served;
- a stranger and a plain peer are refused: the refused side gets the pattern's error within its
  deadline (never a hang), nothing crosses either way, and the keyed side keeps serving a good
  peer afterwards, with the intruder still around.
"""

from __future__ import annotations

import contextlib
import pkgutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
import zmqkit.patterns
from conftest import wait_until
from zmqkit.patterns import failover, farm, groups, pubsub, rpc, state, survey

from zmqkit import Keypair, Keyring, Node, SecurityError, Timeout, ZmqkitError

FAST = {"interval": 0.2, "expiry": 0.6}
KEYED = "keyed"
REFUSE_TIMEOUT = 1.0  # the deadline an intruder's attempt runs under
GOOD_TIMEOUT = 5.0  # the deadline of a good peer's session (discovery and connection included)
SLACK = 0.5  # how far past its deadline a refused attempt may return on a loaded test host
DISCOVERY = 5.0

INTRUDERS = ("stranger", "plain")


@dataclass(frozen=True)
class Cast:
    keyed: Keypair
    good: Keypair
    stranger: Keypair


@pytest.fixture(scope="module")
def cast() -> Cast:
    return Cast(Keypair.generate(), Keypair.generate(), Keypair.generate())


MakeNode = Callable[..., Node]
T = TypeVar("T")


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Every node and part of a test, closed after it, newest first."""
    with contextlib.ExitStack() as parts:
        yield parts


@pytest.fixture
def make_node(beacon_port: int, stack: contextlib.ExitStack) -> MakeNode:
    def make(name: str, **security: Any) -> Node:
        return stack.enter_context(Node(name, port=beacon_port, **FAST, **security))

    return make


def keyed_node(make_node: MakeNode, cast: Cast) -> Node:
    return make_node(KEYED, keys=cast.keyed, keyring=Keyring([cast.good.public]))


def peer_node(make_node: MakeNode, cast: Cast, who: str) -> Node:
    """``good`` (in the keyed node's ring), ``stranger`` (keys not in it) or ``plain``."""
    if who == "good":
        return make_node("good", keys=cast.good, keyring=Keyring([cast.keyed.public]))
    if who == "stranger":
        return make_node("stranger", keys=cast.stranger, keyring=Keyring([cast.keyed.public]))
    assert who == "plain", who
    return make_node("plain")



# -- the scenarios: one per pattern -----------------------------------------------------------


class Echo:
    """An RPC service that remembers every marker it was handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def echo(self, marker: str) -> str:
        self.seen.append(marker)
        return marker


class Scenario:
    """How one pattern is served by the keyed node and used by a peer.

    ``__init__`` makes the keyed node's parts (in ``parts``, closed after the test). ``use`` is
    one peer's session under ``timeout``: it returns once ``marker`` went through, or raises the
    pattern's error. ``breaches`` lists what crossed for the intruders' markers (empty when
    nothing did); it is asked at the end of a test, after a good peer was served too.
    """

    module: ClassVar[str]  # the module of zmqkit.patterns this scenario covers
    role: ClassVar[str]  # what the keyed node advertises once it serves (peers wait for it)
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]]  # intruder -> its contract's error

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        self.keyed = keyed
        self.parts = parts
        self._sessions: dict[uuid.UUID, Any] = {}

    def session(self, peer: Node, make: Callable[[], T]) -> T:
        """The peer's part, made on its first use (a node holds one replica, one Groups...)."""
        if peer.uuid not in self._sessions:
            self._sessions[peer.uuid] = make()
        return self._sessions[peer.uuid]  # type: ignore[no-any-return]

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        raise NotImplementedError

    def breaches(self, markers: list[str]) -> list[str]:
        raise NotImplementedError


class RpcScenario(Scenario):
    """The keyed node serves RPC; a peer calls it. A stranger's handshake fails (the call times
    out); a plain caller is refused at once, since the server's beacon carries a CURVE key."""

    module = "rpc"
    role = "rpc"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (SecurityError,)}

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        super().__init__(keyed, parts)
        self.service = Echo()
        parts.callback(rpc.serve(keyed, self.service).close)

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        with rpc.Client(peer, KEYED, timeout=timeout) as client:
            assert client.call("echo", marker) == marker

    def breaches(self, markers: list[str]) -> list[str]:
        return [f"the handler ran for {m}" for m in markers if m in self.service.seen]


class SurveyScenario(RpcScenario):
    """A peer surveys the keyed RPC node. The survey's contract for a node it cannot talk to:
    ``failed`` holds the SecurityError (plain); one that never answers is ``missing`` at the
    deadline (a stranger), which ``use`` raises as Timeout."""

    module = "survey"
    role = "rpc"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (SecurityError,)}

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        result = survey.ask(peer, KEYED, "echo", marker, timeout=timeout)
        answers = {responder.uuid: value for responder, value in result.answers.items()}
        failed = {responder.uuid: error for responder, error in result.failed.items()}
        if self.keyed.uuid in answers:
            assert answers[self.keyed.uuid] == marker
            return
        if self.keyed.uuid in failed:
            raise failed[self.keyed.uuid]
        assert self.keyed.uuid in {responder.uuid for responder in result.missing}, result
        raise Timeout(f"{result!r}: the keyed node is missing")


class FailoverScenario(RpcScenario):
    """A peer calls the keyed replica through a failover client: a stranger's calls time out (no
    replica could be reached), a plain client's end with the refusal (SecurityError)."""

    module = "failover"

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        with failover.FailoverClient(peer, KEYED, timeout=timeout) as client:
            assert client.call("echo", marker) == marker


class PubsubScenario(Scenario):
    """The keyed node publishes; a peer subscribes and is published to until it receives. A
    refused subscriber receives nothing, ever (not even what is published later for a good one):
    ``recv`` times out."""

    module = "pubsub"
    role = "pub"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (Timeout,)}
    TOPIC = "secrets"

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        super().__init__(keyed, parts)
        self.publisher = parts.enter_context(pubsub.Publisher(keyed))
        self.subscribers: dict[str, pubsub.Subscriber] = {}

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        subscriber = self.session(
            peer, lambda: self.parts.enter_context(pubsub.Subscriber(peer, self.TOPIC)))
        self.subscribers[marker] = subscriber
        while True:
            self.publisher.publish(self.TOPIC, marker)
            try:
                message = subscriber.recv(min(0.05, max(0.0, deadline - time.monotonic())))
            except Timeout:
                if time.monotonic() >= deadline:
                    raise
                continue
            if message.data == marker:
                assert message.publisher == KEYED
                return

    def breaches(self, markers: list[str]) -> list[str]:
        return [f"{m}'s subscriber received {self.subscribers[m].stats()}"
                for m in markers if self.subscribers[m].stats().get("received", 0)]


class FarmScenario(Scenario):
    """The keyed node submits tasks; a peer serves as a worker. No task may reach a refused
    worker: the submitter's ``result`` times out (no admitted worker asked for work)."""

    module = "farm"
    role = "farm:jobs"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (Timeout,)}

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        super().__init__(keyed, parts)
        self.submitter = parts.enter_context(farm.Submitter(keyed, "jobs"))
        self.ran: dict[str, list[Any]] = {}  # worker's marker -> the payloads it ran

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        self.ran[marker] = self.session(peer, lambda: self.serve_worker(peer))
        task_id = self.submitter.submit(marker)
        assert self.submitter.result(task_id, timeout=timeout) == marker

    def serve_worker(self, peer: Node) -> list[Any]:
        """Start a worker on ``peer``; return the list of the payloads it runs."""
        ran: list[Any] = []
        lock = threading.Lock()

        def handler(payload: Any) -> Any:
            with lock:
                ran.append(payload)
            return payload

        self.parts.callback(farm.serve_worker(peer, handler, farm="jobs").close)
        return ran

    def breaches(self, markers: list[str]) -> list[str]:
        return [f"{m}'s worker ran {self.ran[m]}" for m in markers if self.ran[m]]


class StateScenario(Scenario):
    """The keyed node holds a replica with a secret; a peer joins the group with its own replica
    and writes its marker. A good peer gets the secret and the keyed replica its write; a refused
    one waits for the secret in vain (Timeout), and its write never reaches the keyed replica."""

    module = "state"
    role = "state:vault"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (Timeout,)}
    GROUP = "vault"
    REPLICA: ClassVar[dict[str, float]] = {
        "heartbeat": 0.2, "sync_timeout": 1.0, "join_wait": 0.3, "give_up": 2.0}

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        super().__init__(keyed, parts)
        self.replica = parts.enter_context(state.State(keyed, self.GROUP, **self.REPLICA))
        self.replica.set("secret", "keyed-only")
        self.replicas: dict[str, state.State] = {}

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        replica = self.session(peer, lambda: self.parts.enter_context(
            state.State(peer, self.GROUP, **self.REPLICA)))
        self.replicas[marker] = replica
        replica.set(marker, "written by the peer")
        assert replica.wait_for("secret", timeout=timeout) == "keyed-only"
        remaining = max(0.0, deadline - time.monotonic())
        assert self.replica.wait_for(marker, timeout=remaining) == "written by the peer"

    def breaches(self, markers: list[str]) -> list[str]:
        found = [f"the keyed replica holds {m}'s write" for m in markers
                 if self.replica.get(m) is not None]
        return found + [f"{m}'s replica holds the secret" for m in markers
                        if self.replicas[m].get("secret") is not None]


class GroupsScenario(Scenario):
    """The keyed node takes part in groups; a peer whispers to it. A stranger's whisper is never
    acknowledged (Timeout); a plain peer's is refused (SecurityError); the keyed node hears
    neither."""

    module = "groups"
    role = "groups"
    refusal: ClassVar[dict[str, tuple[type[ZmqkitError], ...]]] = {
        "stranger": (Timeout,), "plain": (SecurityError,)}

    def __init__(self, keyed: Node, parts: contextlib.ExitStack) -> None:
        super().__init__(keyed, parts)
        self.heard: list[Any] = []
        self.member = parts.enter_context(groups.Groups(keyed))
        self.member.on_event(lambda event: self.heard.append(event.body))

    def use(self, peer: Node, marker: str, timeout: float) -> None:
        member = self.session(peer, lambda: self.parts.enter_context(groups.Groups(peer)))
        member.whisper(self.keyed.uuid, marker, timeout=timeout)
        # whisper returns once the keyed node has it; its callback may run a moment later
        wait_until(lambda: marker in self.heard, 1.0, f"the keyed node hearing {marker}")

    def breaches(self, markers: list[str]) -> list[str]:
        return [f"the keyed node heard {m}" for m in markers if m in self.heard]


SCENARIOS: list[type[Scenario]] = [
    RpcScenario, PubsubScenario, SurveyScenario, FailoverScenario, FarmScenario, StateScenario,
    GroupsScenario,
]


def scenario_id(scenario: type[Scenario]) -> str:
    return scenario.module


# -- the tests -------------------------------------------------------------------------------


def test_the_registry_covers_every_pattern() -> None:
    """A pattern in ``zmqkit.patterns`` (listed in ``__all__``, or a module of the folder)
    without a scenario here fails: it cannot join the patterns without this test."""
    covered = {scenario.module for scenario in SCENARIOS}
    listed = set(zmqkit.patterns.__all__)
    on_disk = {module.name for module in pkgutil.iter_modules(zmqkit.patterns.__path__)
               if not module.name.startswith("_")}
    assert listed - covered == set(), "patterns in __all__ without a security scenario"
    assert on_disk - covered == set(), "pattern modules without a security scenario"
    assert covered <= listed, "a scenario names a module that zmqkit.patterns does not list"
    for scenario in SCENARIOS:
        assert set(scenario.refusal) == set(INTRUDERS), scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_a_peer_in_the_keyring_is_served(
    scenario: type[Scenario], make_node: MakeNode, cast: Cast, stack: contextlib.ExitStack
) -> None:
    served = scenario(keyed_node(make_node, cast), stack)
    good = peer_node(make_node, cast, "good")
    good.wait_for(KEYED, role=served.role, timeout=DISCOVERY)
    served.use(good, "good-1", GOOD_TIMEOUT)
    served.use(good, "good-2", GOOD_TIMEOUT)  # and again, once connected


@pytest.mark.parametrize("intruder", INTRUDERS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_an_intruder_is_refused_in_time_and_the_keyed_side_keeps_serving(
    scenario: type[Scenario], intruder: str, make_node: MakeNode, cast: Cast,
    stack: contextlib.ExitStack,
) -> None:
    served = scenario(keyed_node(make_node, cast), stack)
    outsider = peer_node(make_node, cast, intruder)
    outsider.wait_for(KEYED, role=served.role, timeout=DISCOVERY)
    marker = f"{intruder}-marker"
    start = time.monotonic()
    try:
        served.use(outsider, marker, REFUSE_TIMEOUT)
    except ZmqkitError as exc:
        refused = exc
    else:
        pytest.fail(f"{scenario.module}: a {intruder} peer was served "
                    f"({served.breaches([marker])})")
    elapsed = time.monotonic() - start
    assert isinstance(refused, served.refusal[intruder]), (
        f"{scenario.module}: a {intruder} peer got {refused!r}, expected one of "
        f"{[t.__name__ for t in served.refusal[intruder]]}"
    )
    assert str(refused), "the refusal says nothing"
    assert elapsed <= REFUSE_TIMEOUT + SLACK, f"refused after {elapsed:.2f} s, past its deadline"

    # the keyed side keeps serving a good peer, with the intruder still around
    good = peer_node(make_node, cast, "good")
    good.wait_for(KEYED, role=served.role, timeout=DISCOVERY)
    served.use(good, "good-after", GOOD_TIMEOUT)
    assert served.breaches([marker]) == []
