"""The demo nodes and the show, run as a user runs them: headless, in real processes."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from conftest import free_udp_port
from rich.console import Console
from zmqkit.demos.dashboard import Board, render
from zmqkit.demos.show import Show

from zmqkit import EventKind, Node, Peer, PeerEvent

pytestmark = pytest.mark.slow


def zmqkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def processes_using_port(port: int) -> list[str]:
    """Command lines of live processes that were given ``--port PORT`` (none should outlive us)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                words = cmdline.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--port" in words and words[words.index("--port") + 1 : words.index("--port") + 2] == [
            str(port)
        ]:
            found.append(" ".join(words))
    return found


@pytest.mark.parametrize(
    "demo",
    [["calc"], ["ticker"], ["ticker", "--watch"], ["chat"], ["farm"]],
    ids=["calc", "ticker", "ticker-watch", "chat", "farm"],
)
def test_each_demo_node_runs_headless_and_ends_by_itself(demo: list[str]) -> None:
    port = free_udp_port()
    result = zmqkit("demo", *demo, "--duration", "3", "--port", str(port), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert processes_using_port(port) == []


@pytest.mark.parametrize("demo", ["calc", "ticker", "chat", "farm"])
def test_each_demo_node_takes_its_beacon_port_from_zmqkit_port(demo: str) -> None:
    # conftest's private_default_port has set ZMQKIT_PORT for this test: no --port given
    result = zmqkit("demo", demo, "--duration", "2", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_calc_node_prints_each_call_as_a_timestamped_line() -> None:
    port = free_udp_port()
    node = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "demo", "calc", "--duration", "6", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        called = zmqkit("call", "calc", "mul", "6", "7", "--port", str(port), "--timeout", "5")
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == "42"
        markup = '"[/x] [red]hi"'  # a caller's text is shown as text, never read as rich markup
        called = zmqkit("call", "calc", "echo", markup, "--port", str(port), "--timeout", "5")
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == markup
        output, errors = node.communicate(timeout=20)
    finally:
        node.kill()
        node.wait()
    assert node.returncode == 0, errors
    assert any(" mul(6, 7) -> 42 (" in line for line in output.splitlines()), output
    assert any(f"echo({markup}) -> {markup}" in line for line in output.splitlines()), output


def test_the_show_ends_by_itself_with_a_summary_and_leaves_nothing_running() -> None:
    port = free_udp_port()
    started = time.monotonic()
    result = zmqkit("demo", "--port", str(port), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr + result.stdout
    assert "zmqkit show: summary" in result.stdout
    for act in ("discovery", "rpc", "pub/sub", "farm", "chat", "leave and expire"):
        assert act in result.stdout
    assert "RemoteError ZeroDivisionError" in result.stdout
    assert "Timeout after 0.5 s" in result.stdout
    assert processes_using_port(port) == []
    lines = result.stdout.splitlines()
    # calls as people write them (they were echo('hello',) and count(5,))
    assert any(' echo("hello") -> "hello" (' in line for line in lines)
    assert any(" count(5) -> streamed [0,1,2,3,4] (" in line for line in lines)
    assert ",)" not in result.stdout
    # each act's events in their act: the chat lines in the chat act, none earlier or later
    acts = [index for index, line in enumerate(lines) if " act: " in line]
    names = [lines[index].split(" act: ")[1] for index in acts]
    assert names == ["discovery", "rpc", "pub/sub", "farm", "chat", "leave and expire"]
    chat, leave = acts[4], acts[5]
    said = [index for index, line in enumerate(lines) if " lobby <" in line]
    assert len(said) == 6 and all(chat < index < leave for index in said), result.stdout
    assert lines[chat].split()[0] != lines[leave].split()[0], "the chat act took its time"
    # the summary's counts are those of the acts, and the expiry is measured
    summary = lines[lines.index("zmqkit show: summary") + 1:]
    ticks = next(line for line in summary if line.startswith("pub/sub |"))
    count = int(ticks.split(" | ")[2])
    assert f"| {count} ticks in " in ticks
    expiry = next(line for line in summary if line.startswith("leave and expire |"))
    assert re.search(r"unheard for \d+\.\d s \(expiry 2.5 s\)", expiry), expiry


def test_ctrl_c_stops_the_show_and_every_node_it_started_without_a_traceback() -> None:
    port = free_udp_port()
    show = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(processes_using_port(port)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(processes_using_port(port)) >= 3, "the show started its nodes"
        show.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        output, errors = show.communicate(timeout=10)
        assert time.monotonic() - interrupted < 3.0
    finally:
        show.kill()
        show.wait()
    assert "Traceback" not in output + errors
    assert show.returncode == 130
    deadline = time.monotonic() + 3
    while processes_using_port(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using_port(port) == []


def chat_node(port: int, name: str, *extra: str, stdin: int = subprocess.DEVNULL
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zmqkit", "demo", "chat", "--port", str(port), "--name", name,
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=stdin,
    )


def test_chat_nodes_run_headless_with_their_script_and_hear_each_other(tmp_path) -> None:
    port = free_udp_port()
    script = tmp_path / "lines.txt"
    script.write_text("first scripted line\nclosing tag [/oops] here\n")  # text, not markup
    other = tmp_path / "other.txt"
    other.write_text("hello from bob\n")
    alice = chat_node(port, "alice", "--script", str(script), "--duration", "5")
    bob = chat_node(port, "bob", "--script", str(other), "--duration", "5")
    try:
        alice_out, alice_err = alice.communicate(timeout=30)
        bob_out, bob_err = bob.communicate(timeout=30)
    finally:
        for process in (alice, bob):
            process.kill()
            process.wait()
    assert alice.returncode == 0 and bob.returncode == 0, alice_err + bob_err
    assert "<alice> first scripted line" in bob_out
    assert "<alice> closing tag [/oops] here" in bob_out
    assert "<bob> hello from bob" in alice_out
    assert "bob joined lobby" in alice_out


def test_chat_says_the_lines_of_a_pipe_and_leaves_at_the_end_of_the_input() -> None:
    # it used to ignore a pipe (sending its own script instead) and run until its duration
    port = free_udp_port()
    carol = chat_node(port, "carol", "--duration", "20", stdin=subprocess.PIPE)  # never ends
    dave = chat_node(port, "dave", stdin=subprocess.PIPE)  # no --duration: the input ends it
    try:
        dave_out, dave_err = dave.communicate("one [b]line[/b]\ntwo\n", timeout=20)
        carol.send_signal(signal.SIGINT)
        carol_out, carol_err = carol.communicate(timeout=20)
    finally:
        for process in (carol, dave):
            process.kill()
            process.wait()
    assert dave.returncode == 0, dave_err
    assert "Traceback" not in dave_err + carol_err
    assert "<dave> one [b]line[/b]" in dave_out and "<dave> two" in dave_out
    assert "dave leaves 'lobby': end of input" in dave_out
    assert "hello from" not in dave_out, "a piped chat says only what it reads"
    assert "<dave> one [b]line[/b]" in carol_out and "<dave> two" in carol_out
    assert carol.returncode == 130, "Ctrl-C"


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_chat_line_typed_in_a_real_terminal_shows_on_the_other_node() -> None:
    port = free_udp_port()
    sessions = [f"zk-chat-{port}-a", f"zk-chat-{port}-b"]
    command = f"{sys.executable} -m zmqkit demo chat --port {port} --duration 20 --name"
    try:
        for session, name in zip(sessions, ("carol", "dave"), strict=False):
            tmux(
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "100",
                "-y",
                "20",
                "-c",
                os.getcwd(),
                f"{command} {name}",
            )
        deadline = time.monotonic() + 15
        while "dave joined lobby" not in tmux("capture-pane", "-p", "-t", sessions[0]):
            assert time.monotonic() < deadline, "carol never saw dave join"
            time.sleep(0.1)
        tmux("send-keys", "-t", sessions[0], "hi dave, from a terminal", "Enter")
        while "<carol> hi dave, from a terminal" not in tmux(
            "capture-pane", "-p", "-t", sessions[1]
        ):
            assert time.monotonic() < deadline, tmux("capture-pane", "-p", "-t", sessions[1])
            time.sleep(0.1)
    finally:
        for session in sessions:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)


def test_the_farm_demo_finishes_every_task_though_it_kills_a_worker() -> None:
    port = free_udp_port()
    result = zmqkit("demo", "farm", "--workers", "3", "--duration", "40", "--port", str(port))
    assert result.returncode == 0, result.stderr
    assert processes_using_port(port) == []
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("90/90 tasks done; every result right: yes; per worker: "), summary
    assert "{" not in summary, "text, not a dict"
    shares = re.search(r"per worker: (.*); duplicates", summary)
    assert shares is not None, summary
    per_worker = dict(share.rsplit(" ", 1) for share in shares.group(1).split(", "))
    assert set(per_worker) == {"worker-1", "worker-2", "worker-3"}
    assert sum(map(int, per_worker.values())) == 90, "the counts per worker add up to the bar"
    # the kill line counts all the tasks done, and says so (it once read as worker-1's count)
    killed = re.search(r"killed worker-1 \(pid \d+\) with SIGKILL when (\d+) of the 90 tasks "
                       r"were done", result.stdout)
    assert killed is not None, result.stdout
    assert 30 <= int(killed.group(1)) < 90


def test_ctrl_c_stops_the_farm_demo_with_130_and_a_truthful_line() -> None:
    # it used to exit 0, as if the farm had finished
    port = free_udp_port()
    farm = subprocess.Popen(  # its own process group, like a terminal's foreground job
        [sys.executable, "-m", "zmqkit", "demo", "farm", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(processes_using_port(port)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(processes_using_port(port)) >= 4, "the farm started its workers"
        os.killpg(farm.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        output, errors = farm.communicate(timeout=20)
    finally:
        farm.kill()
        farm.wait()
    assert farm.returncode == 130, output + errors
    assert "Traceback" not in output + errors
    line = output.splitlines()[-1]
    assert re.match(r"interrupted \(Ctrl-C\) when \d+/90 tasks were done", line), line
    assert line.endswith("the ventilator and the 3 worker processes are stopped")
    assert processes_using_port(port) == []


def test_the_show_records_how_long_an_expired_peer_was_unheard() -> None:
    # it printed the configured expiry ("2.5 s after its last beacon") as if it were measured
    show = Show(Console(file=open(os.devnull, "w")), free_udp_port(), 60.0)  # noqa: SIM115
    try:
        last_seen = time.monotonic() - 2.75
        peer = Peer("ticker", Node("x").uuid, {}, {}, 1, "127.0.0.1", 0.0, last_seen)
        before = time.monotonic()
        show.on_peer_event(PeerEvent(EventKind.EXPIRED, peer))
        after = time.monotonic()
    finally:
        show.console.file.close()
        show.logs.cleanup()
    assert before - last_seen <= show.silence["ticker"] <= after - last_seen


@pytest.mark.parametrize("width, height", [(80, 24), (200, 50)])
def test_every_part_of_the_dashboard_fits_the_terminal(width: int, height: int) -> None:
    # at 80x24 the pub/sub and events panels used to fall below the screen
    peers = [Peer(f"node-{i}", uuid.uuid4(), {"rpc": "tcp://127.0.0.1:1"}, {}, 1,
                         "127.0.0.1", 0.0, 0.0) for i in range(8)]
    board = Board(
        port=4242, act="act 3/6: pub/sub", clock="6.0 s", peers=peers,
        calls=[(f"add({i}, {i})", str(2 * i), "1.00") for i in range(9)],
        patterns=["[bold]ticks[/] 12 received, 0 missed", "farm ███ 3/60", "lobby <a> hi " * 20],
        events=[f"12:00:00.{i:03} event number {i} " + "x" * 100 for i in range(40)],
    )
    screen = io.StringIO()
    console = Console(file=screen, width=width, height=height, color_system=None)
    console.print(render(board, width, height))
    lines = screen.getvalue().splitlines()
    assert len(lines) <= height - 1, "one row is left for the cursor"
    assert all(len(line) <= width for line in lines)
    text = screen.getvalue()
    for part in ("zmqkit show", "peers found by beacon: 8", "calls: 9", "add(8, 8)",
                 "pub/sub and patterns", "ticks 12 received", "events", "event number 39"):
        assert part in text, part
    assert "node-7" in text or "… " in text, "every peer, or how many more"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_show_in_a_terminal_ends_on_done_and_its_counts_agree() -> None:
    # header ended on "act: done — 49 s left"; the panel's ticks disagreed with the summary
    port = free_udp_port()
    session = f"zk-show-{port}"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", "-c", os.getcwd(),
         f"{sys.executable} -m zmqkit demo --port {port}; echo RC=$?; sleep 30")
    try:
        deadline = time.monotonic() + 90
        while "RC=" not in (screen := tmux("capture-pane", "-p", "-S", "-200", "-t", session)):
            assert time.monotonic() < deadline, screen
            time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
    assert "RC=0" in screen, screen
    assert "Traceback" not in screen
    header = [line for line in screen.splitlines() if "zmqkit show · beacon port" in line][-1]
    assert header.rstrip().endswith("· done"), header
    ticks = re.search(r"ticks (\d+) received in \d+\.\d s", screen)
    assert ticks is not None, screen
    assert re.search(rf"pub/sub\s+│ yes │ {ticks.group(1)}\s", screen), screen
    assert 'echo("hello")' in screen


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_farm_demos_last_frame_adds_up_to_its_bar() -> None:
    # its live table stopped a refresh early: the last frame added up to 88 under a 90/90 bar
    port = free_udp_port()
    session = f"zk-farm-{port}"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", "-c", os.getcwd(),
         f"{sys.executable} -m zmqkit demo farm --port {port}; echo RC=$?; sleep 30")
    try:
        deadline = time.monotonic() + 60
        while "RC=" not in (screen := tmux("capture-pane", "-p", "-S", "-100", "-t", session)):
            assert time.monotonic() < deadline, screen
            time.sleep(0.3)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
    assert "RC=0" in screen, screen
    assert re.search(r"tasks .* 90/90", screen), screen
    rows = re.findall(r"│ (worker-\d)(?: \(killed\))?\s+│\s+(\d+) │", screen)
    assert sum(int(count) for _, count in rows) == 90, screen
    assert re.search(r"│ all\s+│\s+90 │", screen), screen
