"""The self-contained show: a small mesh of demo nodes, each its own process, driven by a script.

``zmqkit demo`` (and ``make demo``) starts calc, ticker and other demo nodes as separate
processes on loopback, on a random beacon port so that it never meets other nodes of the machine.
A director node (this process) finds them by name and runs the acts: discovery, RPC calls with a
remote error and a timeout, pub/sub ticks, a task farm that loses a worker, a chat, a node leaving
and one expiring. Each act's nodes and events belong to it: the chat nodes start in the chat act,
the ticks are counted in the pub/sub act. It shows one live dashboard on a terminal (laid out to
fit from 80x24 up; plain timestamped lines in a pipe), stops every process it started, prints a
summary and exits 0, or 1 with a one-line reason, or 130 on Ctrl-C.
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

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from zmqkit.patterns import pubsub, rpc
from zmqkit.patterns.groups import GroupEventKind, Groups

import zmqkit

from .common import EXIT_INTERRUPTED, Clock, call_text, value_text
from .dashboard import Board, render
from .farm import FarmRun

DEFAULT_DURATION = 60.0
EXPIRY = 2.5  # the director declares a silent node gone after this (the nodes beacon every 1 s)
WORKERS = ("worker-1", "worker-2", "worker-3")
FARM_TASKS = 60
CHATTERS = ("alice", "bob")
CHAT_SCRIPT = ("hello from {name}", "anyone else here?", "{name} signing off")


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
        self.started = time.monotonic()
        self.ends_at = self.started + duration
        self.finished: float | None = None  # when the last act ended
        self.duration = duration
        self.children: dict[str, Child] = {}
        self.acts: list[Act] = []
        self.current = "starting"
        self.calls: list[tuple[str, str, str]] = []
        self.events: deque[str] = deque(maxlen=100)
        self.silence: dict[str, float] = {}  # peer name -> seconds unheard when it expired
        self.ticks = 0
        self.tick_seconds: float | None = None  # how long the ticks were counted, once done
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
        """An event of the current act: on the dashboard, or a line of its own in a pipe."""
        stamped = f"{Clock.now()} {line}"
        self.events.append(escape(stamped))
        if self.live is None:
            self.console.print(stamped, highlight=False, markup=False, soft_wrap=True)

    def on_peer_event(self, event: zmqkit.PeerEvent) -> None:
        """A presence event (on the beacon thread): noted, with the silence of an expiry."""
        if event.kind is zmqkit.EventKind.EXPIRED:
            self.silence[event.peer.name] = time.monotonic() - event.peer.last_seen
        if self.finished is not None:
            return  # the nodes the show stops after its last act: the summary says so
        self.events.append(escape(f"{Clock.now()} {event}"))
        if self.live is None:
            self.console.print(f"{Clock.now()} {event}", highlight=False, markup=False)

    def dashboard(self) -> RenderableType:
        """The live dashboard, laid out to the terminal's size now."""
        now = time.monotonic()
        peers = self.node.peers()
        ticks = f"[bold]ticks[/] {self.ticks} received"
        if self.tick_seconds is not None:
            ticks += f" in {self.tick_seconds:.1f} s"
        ticks += f", {self.tick_gaps} missed  "
        ticks += escape(", ".join(f"{sym} {px:,.2f}" for sym, px in sorted(self.prices.items())))
        lines = [ticks]
        for act, (done, total) in self.progress.items():
            filled = int(24 * done / total) if total else 0
            lines.append(
                f"[bold]{act}[/] [green]{'█' * filled}[/]{'░' * (24 - filled)} {done}/{total}"
            )
        lines += [f"[bold]lobby[/] {escape(line)}" for line in self.chat_lines[-2:]]
        if self.finished is None:
            act = f"act {len(self.acts)}/{len(ACTS)}: {self.current}"
            clock = f"{now - self.started:.1f} s"
        else:
            ok = sum(act.ok for act in self.acts)
            act, clock = "done", f"{ok}/{len(self.acts)} acts ok in {self.finished:.1f} s"
        board = Board(
            port=self.port,
            act=act,
            clock=clock,
            peers=peers,
            calls=self.calls,
            patterns=lines,
            events=list(self.events),
            ages={peer.uuid.hex: f"{peer.age(now):.1f}s" for peer in peers},
        )
        return render(board, self.console.size.width, self.console.size.height)

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
                self.say(f"lobby <{event.peer}> {event.body}")

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
        for name in ("calc", "calc-2"):
            self.spawn(name, "calc")
        self.spawn("ticker", "ticker", "--rate", "25")
        for name in WORKERS:
            self.spawn(name, "farm", "--worker")
        wanted = {"calc", "calc-2", "ticker", *WORKERS}

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
                self.record(act, method, args, value_text(result), started)
            started = time.perf_counter()
            items = list(calc.stream("count", 5))
            self.record(act, "count", (5,), f"streamed {value_text(items)}", started)
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
            recovered = value_text(calc.add(1, 1))
            self.record(act, "add", (1, 1), f"{recovered} (after the timeout)", started)
        act.ok = True
        act.result = f"{act.count} calls: values, a stream, a remote error, a timeout, a recovery"

    def record(
        self, act: Act, method: str, args: tuple[Any, ...], result: str, started: float
    ) -> None:
        took = time.perf_counter() - started
        act.count += 1
        act.latencies.append(took)
        call = call_text(method, args)
        self.calls.append((call, result, f"{took * 1000:.2f}"))
        self.say(f"{call} -> {result} ({took * 1000:.2f} ms)")
        self.pump(0.15)

    def ticks_act(self) -> None:
        act = self.act("pub/sub")
        self.ticks_sub = pubsub.Subscriber(self.node, "ticks")
        self.ticks_sub.wait_for_publishers(timeout=5.0)
        started = time.monotonic()
        self.pump(3.0)
        self.ticks_sub.close()  # the ticks on screen are the ticks of this act
        self.ticks_sub = None
        self.tick_seconds = time.monotonic() - started
        act.count = self.ticks
        act.result = f"{act.count} ticks in {self.tick_seconds:.1f} s, {self.tick_gaps} missed"
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
                        f"killed {victim.name} (SIGKILL) at {len(job.done)}/{FARM_TASKS} done"
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
        act.result = (
            f"{act.count}/{FARM_TASKS} tasks, none lost though {victim.name} was killed; "
            f"per worker: {job.shares()}; {job.submitter.duplicates} duplicates"
        )

    def chat_act(self) -> None:
        act = self.act("chat")
        self.chat = Groups(self.node)
        self.chat.join("lobby")
        for name in CHATTERS:
            script = os.path.join(self.logs.name, f"{name}.chat")
            with open(script, "w", encoding="utf-8") as lines:
                lines.writelines(line.format(name=name) + "\n" for line in CHAT_SCRIPT)
            self.spawn(name, "chat", "--script", script)

        def all_said() -> bool:  # every line of both scripts, so none spills into the next act
            return len(self.chat_lines) >= len(CHATTERS) * len(CHAT_SCRIPT)

        try:
            self.wait_until("alice and bob chatting in the lobby", all_said, 15.0)
        except ShowFailed as failure:  # say what the chat nodes said last
            last = {name: (self.child_log(name).strip().splitlines() or ["-"])[-1]
                    for name in CHATTERS}
            raise ShowFailed(f"{failure} (their logs end: {last})") from None
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
            "the killed ticker expiring", lambda: "ticker" in self.silence, EXPIRY + 3.0
        )
        silence = self.silence["ticker"]
        self.say(
            f"ticker gone {expired:.1f} s after the kill, {silence:.1f} s after its last beacon"
        )
        act.latencies += [left, expired]
        act.count = 2
        act.ok = True
        act.result = (
            f"left seen in {left * 1000:.0f} ms; the killed node expired {expired:.1f} s after "
            f"the kill, unheard for {silence:.1f} s (expiry {EXPIRY:g} s)"
        )

    # -- the whole show ----------------------------------------------------------------------------

    def run(self) -> None:
        acts = [getattr(self, method) for method in ACTS]
        with self.node:
            self.node.on_event(self.on_peer_event)
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
                        self.finish()
                else:
                    for act in acts:
                        act()
                    self.finish()
            finally:
                self.live = None
                if self.ticks_sub is not None:
                    self.ticks_sub.close()
                if self.chat is not None:
                    self.chat.close()
                self.stop_all()

    def finish(self) -> None:
        self.finished = time.monotonic() - self.started
        self.current = "done"
        self.say(f"done: {len(self.acts)} acts in {self.finished:.1f} s")
        if self.live is not None:
            self.live.update(self.dashboard(), refresh=True)

    def summary(self) -> None:
        """The summary: a table on a terminal, a line per act in a pipe."""
        rows = [
            (act.name, "yes" if act.ok else "no", str(act.count), act.median_ms(), act.result)
            for act in self.acts
        ]
        columns = ("act", "ok", "count", "median ms", "what happened")
        if not self.console.is_terminal:
            print("zmqkit show: summary", flush=True)
            for row in rows:
                print(" | ".join(row), flush=True)
            return
        table = Table(title="zmqkit show: summary")
        for column in columns:
            table.add_column(column)
        for name, ok, count, median, result in rows:
            okay = "[green]yes[/]" if ok == "yes" else "[red]no[/]"
            table.add_row(escape(name), okay, count, median, escape(result))
        self.console.print(table)


ACTS = ("discovery", "calls_act", "ticks_act", "farm_act", "chat_act", "leave_and_expire")


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
        show.summary()
        console.print(f"[red]show failed[/]: {escape(str(failure))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: every node the show started has been stopped")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
        show.logs.cleanup()
    show.summary()
    console.print(
        "[green]done[/]: every node said goodbye or was stopped; nothing is left running."
    )
    return 0
