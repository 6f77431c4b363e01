"""Shared fixtures: every test leaves no thread and no socket behind, and talks only to loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zmqkit.sockets import open_sockets

LEAK_GRACE = 2.0  # seconds a test's threads get to finish after it returns


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running or a zmqkit socket open."""
    _start_pyzmq_garbage_collector()
    threads_before = set(threading.enumerate())
    sockets_before = set(open_sockets())
    yield
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        sockets = [s for s in open_sockets() if s not in sockets_before]
        if not (threads or sockets) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not threads, f"test left threads running: {threads}"
    assert not sockets, f"test left sockets open: {sockets}"


def _start_pyzmq_garbage_collector() -> None:
    """pyzmq starts one thread per process on the first zero-copy send, to free the buffers;
    start it before the first test looks, so that it is not taken for a leak."""
    from zmq.utils.garbage import gc

    if not gc.is_alive():
        gc.start()


def free_udp_port() -> int:
    """A UDP port that nothing on loopback uses right now: a private beacon port per test."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def beacon_port() -> int:
    return free_udp_port()


@pytest.fixture(autouse=True)
def private_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node made without a port (README examples, CLI commands, their subprocesses) uses a
    beacon port of this test's own: it never meets another test run's nodes or a user's."""
    monkeypatch.setenv("ZMQKIT_PORT", str(free_udp_port()))


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail, saying ``what``, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        time.sleep(0.01)


ROOT = Path(__file__).resolve().parent.parent


def doc_section(document: str, heading: str) -> str:
    """The part of a project document (README.md, docs/protocol.md) under the heading that
    starts with ``heading``, up to the next heading of the same or a higher level."""
    lines = (ROOT / document).read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.lstrip("#").strip().startswith(heading)
                 and line.startswith("#"))
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level),
               len(lines))
    return "\n".join(lines[start:end])
