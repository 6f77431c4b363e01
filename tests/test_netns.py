"""Discovery across hosts, on test hosts made of network namespaces.

Each test builds its own namespaces (named ``zk-<session>-<role>``), joins them with veth pairs
created inside the namespaces (they never appear among the machine's own interfaces), addresses
them in 198.18.0.0/15 only, runs nodes in them as child processes, and deletes every namespace
afterwards, failure or not. Needs root and ``ip``; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nodeproc import NodeProcess, kill_all

pytestmark = pytest.mark.netns

SESSION = f"zk-{secrets.token_hex(3)}"  # every namespace these tests make starts with this
TEST_NET = "198.18."  # RFC 2544 benchmarking range: nothing real lives there
FAST: dict[str, Any] = {"interval": 0.2, "expiry": 0.6}


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def namespaces() -> set[str]:
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespace tests need root (CI runs them as root)"
    if shutil.which("ip") is None:
        return "network namespace tests need the ip command (iproute2)"
    probe = f"{SESSION}-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


class Lab:
    """Namespaces, links and node processes of one test; ``close`` removes all of them."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.children: list[NodeProcess] = []

    def namespace(self, role: str) -> str:
        name = f"{SESSION}-{role}"
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
        """A veth pair between two namespaces; each side is (namespace, interface, address/len)."""
        (ns_a, if_a, addr_a), (ns_b, if_b, addr_b) = a, b
        assert addr_a.startswith(TEST_NET) and addr_b.startswith(TEST_NET)
        ip("-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for ns, interface, address in (a, b):
            ip("-n", ns, "addr", "add", address, "brd", "+", "dev", interface)
            ip("-n", ns, "link", "set", interface, "up")

    def route(self, ns: str, via: str) -> None:
        """Route the test range (and only it) from ``ns`` through ``via``."""
        assert via.startswith(TEST_NET)
        ip("-n", ns, "route", "add", "198.18.0.0/15", "via", via)

    def node(self, ns: str, name: str, **config: Any) -> NodeProcess:
        child = NodeProcess(name, prefix=["ip", "netns", "exec", ns], **FAST, **config)
        self.children.append(child)
        return child

    def close(self) -> None:
        """Reap the children, then delete every namespace, even if one step fails."""
        errors: list[Exception] = []
        try:
            kill_all(self.children)
        except Exception as exc:  # still delete the namespaces; re-raised below
            errors.append(exc)
        for name in self.made:
            try:
                ip("netns", "del", name)
            except RuntimeError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
    left = {name for name in namespaces() if name.startswith(SESSION)}
    assert not left, f"namespaces left behind: {left}"


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` (a round trip to a child) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return value


def test_subnet_scope_discovers_across_a_link_and_localhost_stays_home(
    lab: Lab, beacon_port: int
) -> None:
    one, two = lab.namespace("one"), lab.namespace("two")
    lab.link((one, "zk-one", "198.18.0.1/24"), (two, "zk-two", "198.18.0.2/24"))
    subnet = {"port": beacon_port, "scope": "subnet", "advertise": {"rpc": "tcp://{host}:5000"}}
    alpha = lab.node(one, "alpha", interface="zk-one", wait_for=["beta"], **subnet)
    beta = lab.node(two, "beta", interface="zk-two", wait_for=["alpha"], **subnet)
    homebody = lab.node(one, "homebody", port=beacon_port)  # localhost scope, beside alpha

    assert alpha.wait_ready().host == "198.18.0.1"
    assert beta.wait_ready().host == "198.18.0.2"
    assert homebody.wait_ready().host == "127.0.0.1"
    assert alpha.expect("saw") == "beta"
    assert beta.expect("saw") == "alpha"
    for me, other, address in ((alpha, beta, "198.18.0.2"), (beta, alpha, "198.18.0.1")):
        [peer] = [p for p in me.ask("peers") if p["name"] == other.name]
        assert peer["uuid"] == other.uuid
        assert peer["address"] == address
        assert peer["endpoints"]["rpc"] == f"tcp://{address}:5000"

    # the subnet beacons reach the localhost node (it shares the port) and are dropped there
    until(lambda: homebody.ask("stats").get("dropped-foreign", 0) >= 4, 5, "subnet beacons dropped")
    assert homebody.ask("peers") == []
    # the localhost node's loopback beacons never cross the link
    assert "homebody" not in {p["name"] for p in beta.ask("peers")}

    beta.stop()
    until(lambda: all(p["name"] != "beta" for p in alpha.ask("peers")), 2, "beta seen leaving")


def test_seeds_discover_where_broadcast_does_not_pass(lab: Lab, beacon_port: int) -> None:
    # west (198.18.1.0/24) -- router -- east (198.18.2.0/24): broadcasts stop at the router
    west, router, east = lab.namespace("west"), lab.namespace("router"), lab.namespace("east")
    lab.link((west, "zk-west", "198.18.1.2/24"), (router, "zk-rw", "198.18.1.1/24"))
    lab.link((east, "zk-east", "198.18.2.2/24"), (router, "zk-re", "198.18.2.1/24"))
    subprocess.run(
        ["ip", "netns", "exec", router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        check=True, timeout=10,
    )
    lab.route(west, "198.18.1.1")
    lab.route(east, "198.18.2.1")

    seeded = {"port": beacon_port, "scope": "subnet"}
    a = lab.node(west, "seeded-west", interface="zk-west", seeds=["198.18.2.2"],
                 wait_for=["seeded-east"], **seeded)
    b = lab.node(east, "seeded-east", interface="zk-east", seeds=[f"198.18.1.2:{beacon_port}"],
                 wait_for=["seeded-west"], **seeded)
    # the control: the same pair without seeds, on another port, must not meet
    control = {"port": beacon_port ^ 1, "scope": "subnet"}  # any other port: fresh namespaces
    c = lab.node(west, "plain-west", interface="zk-west", **control)
    d = lab.node(east, "plain-east", interface="zk-east", **control)
    for child in (a, b, c, d):
        child.wait_ready()
    assert a.expect("saw") == "seeded-east"
    assert b.expect("saw") == "seeded-west"
    assert [p["address"] for p in a.ask("peers")] == ["198.18.2.2"]
    assert [p["address"] for p in b.ask("peers")] == ["198.18.1.2"]

    for child in (c, d):
        until(lambda: child.ask("stats").get("sent", 0) >= 4, 5, "control beacons")  # noqa: B023
    assert c.ask("peers") == []
    assert d.ask("peers") == []


def test_no_namespace_is_left_behind() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    assert not {name for name in namespaces() if name.startswith(SESSION)}
