"""A zmqkit Node in a child process, driven line by line over its stdin and stdout.

The discovery tests need nodes that live in other processes (and, for the namespace tests, in
other network namespaces), that can be stopped cleanly or killed, and that can be asked what they
see. The child runs ``CHILD_SCRIPT`` with ``sys.executable -c``; its configuration is one JSON
argument (the keyword arguments of ``Node`` plus a few extras) and it answers commands:

    stdin           stdout
    -------------   -------------------------------------------------------------------
    (at start)      ``ready {"uuid": ..., "host": ...}``, then ``saw NAME`` per wanted name
    ``peers``       ``peers [{"name", "uuid", "address", "endpoints"}, ...]``
    ``stats``       ``stats {...}`` (``Node.stats()``)
    ``quit`` / EOF  closes the node, prints ``closed`` and exits 0

A child whose parent dies sees EOF on stdin and stops by itself: nothing is left behind.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

CHILD_SCRIPT = r"""
import json, sys, time
from zmqkit import Node

config = json.loads(sys.argv[1])
name = config.pop("name")
wanted = config.pop("wait_for", [])
busy = config.pop("busy", 0.0)
advertise = config.pop("advertise", {})

def say(*words):
    print(*words, flush=True)

node = Node(name, **config)
for role, endpoint in advertise.items():  # before start: the first beacon carries them
    node.advertise(role, endpoint.format(host=node.host))
with node:
    say("ready", json.dumps({"uuid": str(node.uuid), "host": node.host}))
    for other in wanted:
        node.wait_for(other, timeout=10)
        say("saw", other)
    if busy:
        # pure Python, no sleeping and no I/O: only the beacon thread can keep us alive
        end, total = time.monotonic() + busy, 0
        while time.monotonic() < end:
            for i in range(10_000):
                total += i * i % 7
        say("busy-done", total > 0)
    for line in sys.stdin:
        command = line.strip()
        if command == "peers":
            say("peers", json.dumps([
                {"name": p.name, "uuid": str(p.uuid), "address": p.address,
                 "endpoints": dict(p.endpoints)}
                for p in node.peers()
            ]))
        elif command == "stats":
            say("stats", json.dumps(node.stats()))
        elif command == "quit":
            break
say("closed")
"""


class NodeProcess:
    """One child process running one Node; use it as a context manager so it is always reaped.

    ``prefix`` runs the child under another command, e.g. ``["ip", "netns", "exec", "ns1"]``.
    """

    def __init__(self, name: str, *, prefix: Sequence[str] = (), **config: Any) -> None:
        self.name = name
        self.uuid = ""
        self.host = ""
        self._buffer = b""
        self._lines: list[str] = []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", CHILD_SCRIPT, json.dumps({"name": name, **config})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()

    def wait_ready(self, timeout: float = 10.0) -> NodeProcess:
        info = json.loads(self.expect("ready", timeout))
        self.uuid, self.host = info["uuid"], info["host"]
        return self

    def expect(self, word: str, timeout: float = 10.0) -> str:
        """The rest of the next stdout line that starts with ``word``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for index, line in enumerate(self._lines):
                head, _, rest = line.partition(" ")
                if head == word:
                    del self._lines[: index + 1]
                    return rest
            remaining = deadline - time.monotonic()
            assert self.proc.stdout is not None
            if remaining <= 0 or not select.select([self.proc.stdout], [], [], remaining)[0]:
                raise AssertionError(f"{self.name}: no {word!r} in {timeout} s; {self._dump()}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"{self.name} exited before saying {word!r}; {self._dump()}")
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self._lines += [line.decode() for line in complete]

    def ask(self, command: str, timeout: float = 5.0) -> Any:
        """Send ``peers`` or ``stats`` and return the decoded answer."""
        self.send(command)
        return json.loads(self.expect(command, timeout))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    def stop(self, timeout: float = 5.0) -> None:
        """A clean stop: the child closes its node (saying goodbye) and exits 0."""
        self.send("quit")
        self.expect("closed", timeout)
        assert self.proc.wait(timeout) == 0, self._dump()

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def kill(self) -> None:
        """Kill (if still running), reap, close the pipes. Safe to call twice."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _dump(self) -> str:
        stderr = b""
        if self.proc.poll() is not None and self.proc.stderr and not self.proc.stderr.closed:
            stderr = self.proc.stderr.read()
        tail = stderr.decode()[-2000:]
        return f"exit {self.proc.poll()}, stdout {self._lines!r}, stderr {tail!r}"


def kill_all(children: Sequence[NodeProcess]) -> None:
    """Reap every child, even when killing one of them fails."""
    errors = []
    for child in children:
        try:
            child.kill()
        except Exception as exc:  # keep reaping the others; re-raised below
            errors.append(exc)
    if errors:
        raise errors[0]
