"""Discovery through one seed, across segments that broadcast does not cross (issue 15).

Test hosts are network namespaces (``test_netns.Lab``: veth pairs made inside the namespaces,
addresses in 198.18.0.0/15, everything deleted afterwards). A router namespace forwards unicast
between the segments and, like every router, no broadcast. Host names resolve only through each
namespace's ``/etc/netns/NAME/hosts`` (with an ``nsswitch.conf`` of ``hosts: files``), which
``ip netns exec`` mounts over /etc for the processes it starts: no DNS query is ever made.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from nodeproc import NodeProcess
from test_netns import Lab, lab, until  # noqa: F401  (lab: the fixture)

from zmqkit import Node

pytestmark = pytest.mark.netns

NETNS_ETC = Path("/etc/netns")
SEEDED: dict[str, Any] = {"interval": 0.2, "expiry": 2.0, "scope": "subnet"}


class Hosts:
    """``/etc/netns/NS/hosts`` files for the lab's namespaces; removed by ``close``."""

    def __init__(self) -> None:
        self.made_etc = not NETNS_ETC.exists()
        self.folders: list[Path] = []

    def write(self, namespace: str, lines: str) -> None:
        """Write (in place: the bind mount of a running process follows the same file)."""
        folder = NETNS_ETC / namespace
        if folder not in self.folders:
            folder.mkdir(parents=True)
            self.folders.append(folder)
            (folder / "nsswitch.conf").write_text("hosts: files\n")
        with open(folder / "hosts", "r+" if (folder / "hosts").exists() else "w") as hosts:
            hosts.seek(0)
            hosts.write(f"127.0.0.1 localhost\n{lines}")
            hosts.truncate()

    def close(self) -> None:
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        if self.made_etc and NETNS_ETC.exists() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()


@pytest.fixture
def hosts(lab: Lab) -> Iterator[Hosts]:  # noqa: F811
    files = Hosts()
    yield files
    files.close()


def routed(lab: Lab, segments: dict[str, int]) -> dict[str, str]:  # noqa: F811
    """One host namespace per segment (``198.18.N.2/24``), each behind one router
    (``198.18.N.1``) that forwards unicast between them. Returns {segment: namespace}."""
    router = lab.namespace("router")
    subprocess.run(["ip", "netns", "exec", router, "sysctl", "-q", "-w",
                    "net.ipv4.ip_forward=1"], check=True, timeout=10)
    made = {}
    for segment, n in segments.items():
        host = lab.namespace(segment)
        lab.link((host, f"zk-{segment}", f"198.18.{n}.2/24"),
                 (router, f"zk-r{n}", f"198.18.{n}.1/24"))
        lab.route(host, f"198.18.{n}.1")
        made[segment] = host
    return made


def node(lab: Lab, namespace: str, name: str, segment: str, **config: Any) -> NodeProcess:  # noqa: F811
    child = NodeProcess(name, prefix=["ip", "netns", "exec", namespace],
                        interface=f"zk-{segment}", **SEEDED, **config)
    lab.children.append(child)
    return child


def names(child: NodeProcess) -> set[str]:
    return {peer["name"] for peer in child.ask("peers")}


def cli_peers(namespace: str, port: int, *options: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "zmqkit", "peers", "--json",
         "--port", str(port), "--wait", "10", *options],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_one_seed_name_discovers_three_segments_and_the_cli_lists_all_nine(
    lab: Lab, hosts: Hosts, beacon_port: int  # noqa: F811
) -> None:
    # A and C seed B's host by name; B seeds nobody; three nodes share each host's beacon port
    spaces = routed(lab, {"a": 1, "b": 2, "c": 3})
    for segment in ("a", "c"):
        hosts.write(spaces[segment], "198.18.2.2 b-host\n")
    children = {}
    for segment in ("a", "b", "c"):
        seeds = ["b-host"] if segment != "b" else []
        for i in range(3):
            children[f"{segment}-{i}"] = node(lab, spaces[segment], f"{segment}-{i}", segment,
                                              port=beacon_port, seeds=seeds)
    for child in children.values():
        child.wait_ready()
    everyone = set(children)
    for name, child in children.items():
        until(lambda: names(child) == everyone - {name}, 15,  # noqa: B023
              f"{name} sees the 8 others")
    # every peer is known where its beacons come from: its host, its process's own port
    [b0] = [p for p in children["a-0"].ask("peers") if p["name"] == "b-0"]
    assert b0["address"] == "198.18.2.2"

    for segment in ("a", "c"):  # the command: no seed needed, its neighbours pass on the rest
        rows = cli_peers(spaces[segment], beacon_port, "--scope", "subnet",
                         "--interface", f"zk-{segment}")
        assert {row["name"] for row in rows} == everyone, segment
    # in localhost scope a seed's host is all it reaches: every node there, through one
    rows = cli_peers(spaces["a"], beacon_port, "--seed", "b-host")
    assert {row["name"] for row in rows} == {"b-0", "b-1", "b-2"}


def test_without_answers_a_seed_works_one_way_only(
    lab: Lab, hosts: Hosts, beacon_port: int  # noqa: F811
) -> None:
    """The control: a node that only hears a seed (a listening seed answers nothing) sees
    nothing of it, and the seed sees the node but cannot reach it. The test above fails if
    the answers or the exchange go missing."""
    spaces = routed(lab, {"a": 1, "b": 2})
    hosts.write(spaces["a"], "198.18.2.2 b-host\n")
    seeder = node(lab, spaces["a"], "seeder", "a", port=beacon_port, seeds=["b-host"])
    listener = node(lab, spaces["b"], "listener", "b", port=beacon_port, announce=False)
    seeder.wait_ready()
    listener.wait_ready()
    until(lambda: names(listener) == {"seeder"}, 10, "the listening seed hears the seeder")
    until(lambda: seeder.ask("stats").get("sent", 0) >= 10, 10, "the seeder keeps beaconing")
    assert names(seeder) == set()


def test_a_name_with_two_addresses_reaches_both_and_a_changed_hosts_file_is_followed(
    lab: Lab, hosts: Hosts, beacon_port: int  # noqa: F811
) -> None:
    # b and d never hear each other: only "svc" resolving to both brings them to a
    spaces = routed(lab, {"a": 1, "b": 2, "d": 3, "e": 4})
    hosts.write(spaces["a"], "198.18.2.2 svc\n198.18.3.2 svc\n")
    seeder = node(lab, spaces["a"], "seeder", "a", port=beacon_port, seeds=["svc"])
    for segment in ("b", "d", "e"):
        node(lab, spaces[segment], f"svc-{segment}", segment, port=beacon_port).wait_ready()
    seeder.wait_ready()
    until(lambda: names(seeder) == {"svc-b", "svc-d"}, 10, "both addresses of svc reached")

    hosts.write(spaces["a"], "198.18.2.2 svc\n198.18.4.2 svc\n")  # svc moves from d to e
    until(lambda: "svc-e" in names(seeder), 10, "the new address of svc reached")
    # d is no seed any more, but a live peer: the two keep beaconing each other while both live
    assert names(seeder) == {"svc-b", "svc-d", "svc-e"}


def test_a_seed_name_that_does_not_resolve_yet_is_retried_and_logged_once(
    beacon_port: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On loopback, with the lookup replaced: no name ever reaches a resolver. Once the name
    resolves (to a raw socket standing in for a seed), beacons go there."""
    from zmqkit import resolver

    answers: dict[str, set[tuple[str, int]]] = {}
    asked = threading.Semaphore(0)

    def lookup(host: str, port: int) -> set[tuple[str, int]]:
        asked.release()
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    monkeypatch.setattr(resolver, "lookup", lookup)
    caplog.set_level(logging.DEBUG, logger="zmqkit.beacon")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as seed, \
            Node("late", port=beacon_port, seeds=["late-seed.test"], interval=0.1,
                 expiry=0.5) as me:
        seed.bind(("127.0.0.1", 0))
        for _ in range(3):  # looked up again and again (every 5 intervals), never fatal
            assert asked.acquire(timeout=5)
        assert me.running

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "late-seed.test" in r.getMessage()]

        wait_until(lambda: len(failures()) >= 3, 5, "three failed lookups logged")
        failures = failures()  # type: ignore[assignment]
        assert [r.levelno for r in failures][:1] == [logging.WARNING]
        assert all(r.levelno == logging.DEBUG for r in failures[1:])
        answers["late-seed.test"] = {("127.0.0.1", seed.getsockname()[1])}
        seed.settimeout(5)
        datagram, _ = seed.recvfrom(2048)
        assert b"late" in datagram  # its HELLO (or solicit), at the address the name has now
    assert any("resolves again" in r.getMessage() for r in caplog.records)


def test_hosts_on_one_bridge_find_each_other_by_broadcast_alone(
    lab: Lab, beacon_port: int  # noqa: F811
) -> None:
    """A Docker bridge network (or one LAN switch) as namespaces on one Linux bridge: subnet
    scope, no seeds, several nodes a host, and no unicast beacons needed."""
    switch = lab.namespace("switch")
    subprocess.run(["ip", "-n", switch, "link", "add", "zk-br", "type", "bridge"], check=True,
                   timeout=10)
    subprocess.run(["ip", "-n", switch, "link", "set", "zk-br", "up"], check=True, timeout=10)
    children = []
    for h in range(3):
        host = lab.namespace(f"h{h}")
        lab.link((host, "zk-h", f"198.18.20.{h + 1}/24"), (switch, f"zk-s{h}", f"198.18.21.{h}/32"))
        subprocess.run(["ip", "-n", switch, "link", "set", f"zk-s{h}", "master", "zk-br"],
                       check=True, timeout=10)
        for i in range(2):
            children.append(NodeProcess(f"h{h}-{i}", prefix=["ip", "netns", "exec", host],
                                        interface="zk-h", port=beacon_port, **SEEDED))
            lab.children.append(children[-1])
    for child in children:
        child.wait_ready()
    everyone = {child.name for child in children}
    for child in children:
        until(lambda: names(child) == everyone - {child.name}, 10,  # noqa: B023
              f"{child.name} sees the 5 others")
    stats = children[0].ask("stats")
    assert stats.get("probes", 0) == 0 and stats.get("peer-lists-sent", 0) == 0
