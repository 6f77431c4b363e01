"""The self-contained show: a small mesh of demo nodes, each its own process, driven by a script.

``zmqkit demo`` (and ``make demo``) starts calc, ticker and other demo nodes as separate
processes on loopback, on a random beacon port so that it never meets other nodes of the machine.
A director node (this process) finds them by name and runs the acts: discovery, RPC calls with a
remote error and a timeout, pub/sub ticks, the acts of the other patterns, a node leaving and one
expiring. It shows one live dashboard on a terminal (plain timestamped lines otherwise), stops
every process it started, prints a summary and exits 0, or 1 with a one-line reason.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from zmqkit.patterns import pubsub, rpc
from zmqkit.patterns.groups import GroupEventKind, Groups

import zmqkit

from .common import Clock
from .farm import FarmRun

DEFAULT_DURATION = 60.0
EXPIRY = 2.5  # the director declares a silent node gone after this (the nodes beacon every 1 s)
WORKERS = ("worker-1", "worker-2", "worker-3")
FARM_TASKS = 60


class ShowFailed(Exception):
    """An act did not do what the show promises; the message is the one-line reason."""


@dataclass
class Child:
    """A demo node process started by the show."""

    name: str
    process: subprocess.Popen[bytes]
    log: Any

    def stop(self, grace: float = 1.5) -> None:
        """SIGTERM (the node says goodbye), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(grace)
        self.log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)


@dataclass
class Act:
    name: str
    result: str = "not run"
    ok: bool = False
    count: int = 0
    latencies: list[float] = field(default_factory=list)

    def median_ms(self) -> str:
        return f"{statistics.median(self.latencies) * 1000:.2f}" if self.latencies else "-"


class Show:
    """The director: starts the nodes, runs the acts, keeps the dashboard."""

    def __init__(self, console: Console, port: int, duration: float) -> None:
        self.console = console
        self.port = port
        self.ends_at = time.monotonic() + duration
        self.duration = duration
        self.children: dict[str, Child] = {}
        self.acts: list[Act] = []
        self.current = "starting"
        self.calls: deque[tuple[str, str, str, str]] = deque(maxlen=8)
        self.events: deque[str] = deque(maxlen=8)
        self.ticks = 0
        self.tick_gaps = 0
        self.prices: dict[str, float] = {}
        self.progress: dict[str, tuple[int, int]] = {}  # act -> (done, total), for progress bars
        self.node = zmqkit.Node("show", port=port, expiry=EXPIRY)
        self.logs = tempfile.TemporaryDirectory(prefix="zmqkit-show-")
        self.live: Live | None = None
        self.interrupted = False
        self.ticks_sub: pubsub.Subscriber | None = None
        self.chat: Groups | None = None
        self.chat_lines: list[str] = []

    # -- processes -------------------------------------------------------------------------------

    def spawn(self, name: str, *demo_args: str) -> Child:
        """Start ``zmqkit demo ...`` as a process of its own, named ``name`` on the network."""
        log = open(os.path.join(self.logs.name, f"{name}.log"), "wb")  # noqa: SIM115 - Child closes it
        command = [
            sys.executable,
            "-m",
            "zmqkit",
            "demo",
            *demo_args,
            "--name",
            name,
            "--port",
            str(self.port),
            "--duration",
            f"{self.duration + 15:g}",
        ]
        # its own process group: Ctrl-C reaches the show, which stops every node itself
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        child = self.children[name] = Child(name, process, log)
        self.say(f"started {name} (pid {process.pid})")
        self.check_interrupted()
        return child

    def stop_all(self) -> None:
        for child in self.children.values():
            child.stop()

    def child_log(self, name: str) -> str:
        try:
            with open(os.path.join(self.logs.name, f"{name}.log"), "rb") as log:
                return log.read().decode(errors="replace")[-2000:]
        except OSError:
            return ""

    # -- the screen ------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        self.events.append(f"{Clock.now()} {line}")
        if self.live is None:
            self.console.print(f"{Clock.now()} {line}", highlight=False)

    def dashboard(self) -> Group:
        peers = Table(title="peers (found by beacon)", expand=True)
        for column in ("name", "uuid", "serves", "age"):
            peers.add_column(column)
        now = time.monotonic()
        for peer in sorted(self.node.peers(), key=lambda p: p.name):
            peers.add_row(
                peer.name,
                peer.uuid.hex[:8],
                ", ".join(sorted(peer.endpoints)),
                f"{peer.age(now):.1f}s",
            )
        calls = Table(title="calls", expand=True)
        for column in ("method", "args", "result", "ms"):
            calls.add_column(column)
        for row in self.calls:
            calls.add_row(*row)
        ticks = ", ".join(f"{sym} {px:,.2f}" for sym, px in sorted(self.prices.items()))
        lines = [f"[bold]ticks[/] {self.ticks} received, {self.tick_gaps} missed  {ticks}"]
        lines += [f"[bold]lobby[/] {line}" for line in self.chat_lines[-3:]]
        for act, (done, total) in self.progress.items():
            filled = int(30 * done / total) if total else 0
            lines.append(
                f"[bold]{act}[/] [green]{'█' * filled}[/]{'░' * (30 - filled)} {done}/{total}"
            )
        top = Table.grid(expand=True)
        top.add_column(ratio=1)
        top.add_column(ratio=1)
        top.add_row(peers, calls)
        return Group(
            Panel(
                f"[bold]zmqkit show[/] — beacon port {self.port} — act: [cyan]{self.current}[/] — "
                f"{max(0.0, self.ends_at - now):.0f} s left",
                style="blue",
            ),
            top,
            Panel("\n".join(lines), title="pub/sub and patterns"),
            Panel("\n".join(self.events) or "-", title="events"),
        )

    def on_interrupt(self, _signal: int, _frame: object) -> None:
        """Ctrl-C: noted here, acted on at the next wait, so that no node the show has just
        started can slip past the list of nodes to stop."""
        self.interrupted = True

    def check_interrupted(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def pump(self, seconds: float) -> None:
        """Wait ``seconds`` while taking ticks and refreshing the screen."""
        ends = time.monotonic() + seconds
        self.check_interrupted()
        while time.monotonic() < ends:
            self.check_interrupted()
            if self.ticks_sub is not None:
                try:
                    message = self.ticks_sub.recv(min(0.05, max(0.0, ends - time.monotonic())))
                    self.ticks += 1
                    self.tick_gaps = self.ticks_sub.gaps
                    if isinstance(message.data, dict) and "sym" in message.data:
                        self.prices[str(message.data["sym"])] = float(message.data.get("px", 0))
                except zmqkit.Timeout:
                    pass
            else:
                time.sleep(min(0.05, max(0.0, ends - time.monotonic())))
            self.take_chat()
            if self.live is not None:
                self.live.update(self.dashboard())
            if time.monotonic() > self.ends_at:
                raise ShowFailed(f"the show ran past its {self.duration:g} s")

    def take_chat(self) -> None:
        """Show what the chat nodes said in the lobby."""
        if self.chat is None:
            return
        while True:
            try:
                event = self.chat.recv(0)
            except zmqkit.Timeout:
                return
            if event.kind is GroupEventKind.SHOUT:
                self.chat_lines.append(f"<{event.peer}> {event.body}")
                self.say(f"chat <{event.peer}> {event.body}")

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float) -> float:
        """Pump until ``check()`` holds; return how long it took."""
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise ShowFailed(f"{what} did not happen within {timeout:g} s")
            self.pump(0.02)
        return time.monotonic() - started

    def act(self, name: str) -> Act:
        self.current = name
        act = Act(name)
        self.acts.append(act)
        self.say(f"act: {name}")
        return act

    # -- the acts ----------------------------------------------------------------------------------

    def discovery(self) -> None:
        act = self.act("discovery")
        started = time.monotonic()
        self.chat = Groups(self.node)
        self.chat.join("lobby")
        for name in ("calc", "calc-2"):
            self.spawn(name, "calc")
        self.spawn("ticker", "ticker", "--rate", "25")
        for name in ("alice", "bob"):
            self.spawn(name, "chat")
        for name in WORKERS:
            self.spawn(name, "farm", "--worker")
        wanted = {"calc", "calc-2", "ticker", "alice", "bob", *WORKERS}

        def everyone_found() -> bool:
            found = {peer.name for peer in self.node.peers()}
            return wanted <= found

        self.wait_until("finding " + ", ".join(sorted(wanted)), everyone_found, 20.0)
        act.latencies.append(time.monotonic() - started)
        act.count = len(self.node.peers())
        act.ok = True
        act.result = f"found {act.count} nodes by name, process start included"

    def calls_act(self) -> None:
        act = self.act("rpc")
        with rpc.Client(self.node, "calc", timeout=5.0) as calc:
            for method, args in (
                ("add", (2, 3)),
                ("mul", (6, 7)),
                ("echo", ("hello",)),
                ("add", (0.1, 0.2)),
                ("mul", (-1, 99)),
            ):
                started = time.perf_counter()
                result = calc.call_with(method, args)
                self.record(act, method, args, repr(result), started)
            started = time.perf_counter()
            items = list(calc.stream("count", 5))
            self.record(act, "count", (5,), f"streamed {items}", started)
            started = time.perf_counter()
            try:
                calc.div(1, 0)
                raise ShowFailed("div(1, 0) did not raise a remote error")
            except zmqkit.RemoteError as error:
                self.record(act, "div", (1, 0), f"RemoteError {error.type_name}", started)
            started = time.perf_counter()
            try:
                calc.call("sleep", 3, timeout=0.5)
                raise ShowFailed("sleep(3) with a 0.5 s deadline did not time out")
            except zmqkit.Timeout:
                self.record(act, "sleep", (3,), "Timeout after 0.5 s", started)
            started = time.perf_counter()
            self.record(act, "add", (1, 1), repr(calc.add(1, 1)) + " (after the timeout)", started)
        act.ok = True
        act.result = f"{act.count} calls: values, a stream, a remote error, a timeout, a recovery"

    def record(
        self, act: Act, method: str, args: tuple[Any, ...], result: str, started: float
    ) -> None:
        took = time.perf_counter() - started
        act.count += 1
        act.latencies.append(took)
        self.calls.append((method, ", ".join(map(repr, args)), result, f"{took * 1000:.2f}"))
        self.say(f"{method}{args} -> {result} ({took * 1000:.2f} ms)")
        self.pump(0.15)

    def ticks_act(self) -> None:
        act = self.act("pub/sub")
        self.ticks_sub = pubsub.Subscriber(self.node, "ticks")
        self.ticks_sub.wait_for_publishers(timeout=5.0)
        before = self.ticks
        started = time.monotonic()
        self.pump(3.0)
        act.count = self.ticks - before
        act.result = (
            f"{act.count} ticks in {time.monotonic() - started:.1f} s, {self.tick_gaps} missed"
        )
        act.ok = act.count > 0
        if not act.ok:
            raise ShowFailed("no tick arrived from the ticker")

    def farm_act(self) -> None:
        act = self.act("farm")
        started = time.monotonic()
        job = FarmRun(self.node, FARM_TASKS)
        victim = self.children[WORKERS[0]]
        try:
            while job.take(0.05):
                self.progress["farm"] = (len(job.done), FARM_TASKS)
                if victim.process.poll() is None and len(job.done) >= FARM_TASKS // 3:
                    victim.kill()
                    self.say(
                        f"killed {victim.name} (SIGKILL) after {len(job.done)} tasks in all: "
                        "its tasks move to the other workers"
                    )
                self.pump(0.0)
            self.progress["farm"] = (len(job.done), FARM_TASKS)
        finally:
            job.close()
        if not job.correct():
            raise ShowFailed("a farm task came back wrong or missing")
        act.latencies.append(time.monotonic() - started)
        act.count = len(job.done)
        act.ok = True
        workers = ", ".join(f"{count}" for _, count in sorted(job.per_worker.items()))
        act.result = (
            f"{act.count}/{FARM_TASKS} tasks, none lost though a worker was killed; "
            f"per worker {workers}; {job.submitter.duplicates} duplicates"
        )

    def chat_act(self) -> None:
        act = self.act("chat")

        def both_spoke() -> bool:
            speakers = {line.split(">")[0][1:] for line in self.chat_lines}
            return {"alice", "bob"} <= speakers and len(self.chat_lines) >= 4

        self.wait_until("alice and bob chatting in the lobby", both_spoke, 15.0)
        act.count = len(self.chat_lines)
        act.ok = True
        act.result = f"{act.count} lines shouted in 'lobby' by alice and bob (groups pattern)"

    def leave_and_expire(self) -> None:
        act = self.act("leave and expire")
        started = time.monotonic()
        self.children["calc-2"].stop()  # SIGTERM: the node says goodbye
        self.wait_until("calc-2 leaving", lambda: not self.node.peers("calc-2"), 5.0)
        left = time.monotonic() - started
        self.say(f"calc-2 stopped cleanly (SIGTERM): seen gone {left * 1000:.0f} ms later")
        self.children["ticker"].kill()  # SIGKILL: no goodbye, so it must expire
        self.say("ticker killed (SIGKILL): waiting for it to expire")
        expired = self.wait_until(
            "the killed ticker expiring", lambda: not self.node.peers("ticker"), EXPIRY + 3.0
        )
        self.say(
            f"ticker declared gone {expired:.1f} s after the kill "
            f"({EXPIRY} s after its last beacon)"
        )
        act.latencies += [left, expired]
        act.count = 2
        act.ok = True
        act.result = f"left seen in {left * 1000:.0f} ms; killed node expired in {expired:.1f} s"

    # -- the whole show ----------------------------------------------------------------------------

    def run(self) -> None:
        acts = [
            self.discovery,
            self.calls_act,
            self.ticks_act,
            self.farm_act,
            self.chat_act,
            self.leave_and_expire,
        ]
        with self.node:
            self.node.on_event(lambda event: self.events.append(f"{Clock.now()} {event}"))
            try:
                if self.console.is_terminal:
                    with Live(
                        self.dashboard(),
                        console=self.console,
                        refresh_per_second=8,
                        transient=False,
                    ) as self.live:
                        for act in acts:
                            act()
                        self.current = "done"
                        self.live.update(self.dashboard())
                    self.live = None
                else:
                    for act in acts:
                        act()
            finally:
                self.live = None
                if self.ticks_sub is not None:
                    self.ticks_sub.close()
                if self.chat is not None:
                    self.chat.close()
                self.stop_all()

    def summary(self) -> Table:
        table = Table(title="zmqkit show: summary")
        for column in ("act", "ok", "count", "median ms", "what happened"):
            table.add_column(column)
        for act in self.acts:
            table.add_row(
                act.name,
                "[green]yes[/]" if act.ok else "[red]no[/]",
                str(act.count),
                act.median_ms(),
                act.result,
            )
        return table


def run(
    console: Console | None = None, port: int | None = None, duration: float | None = None
) -> int:
    """Run the show; return the exit code: 0 when every act did what it promises."""
    console = console or Console()
    show = Show(console, port or random.randint(20000, 40000), duration or DEFAULT_DURATION)
    previous = signal.signal(signal.SIGINT, show.on_interrupt)
    try:
        show.run()
    except ShowFailed as failure:
        console.print(show.summary())
        console.print(f"[red]show failed[/]: {failure}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: every node the show started has been stopped")
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        show.logs.cleanup()
    console.print(show.summary())
    console.print(
        "[green]done[/]: every node said goodbye or was stopped; nothing is left running."
    )
    return 0
