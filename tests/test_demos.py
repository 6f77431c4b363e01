"""The demo nodes and the show, run as a user runs them: headless, in real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import free_udp_port

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
        markup = "[/x] [red]hi"  # a caller's text is shown as text, never read as rich markup
        called = zmqkit("call", "calc", "echo", markup, "--port", str(port), "--timeout", "5")
        assert called.returncode == 0, called.stderr
        assert markup in called.stdout
        output, errors = node.communicate(timeout=20)
    finally:
        node.kill()
        node.wait()
    assert node.returncode == 0, errors
    assert any(" mul 6, 7 42 " in line for line in output.splitlines()), output
    assert any(markup in line for line in output.splitlines()), output


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


def test_chat_nodes_run_headless_with_their_script_and_hear_each_other(tmp_path) -> None:
    port = free_udp_port()
    script = tmp_path / "lines.txt"
    script.write_text("first scripted line\nclosing tag [/oops] here\n")  # text, not markup
    command = [
        sys.executable,
        "-m",
        "zmqkit",
        "demo",
        "chat",
        "--port",
        str(port),
        "--duration",
        "5",
    ]
    alice = subprocess.Popen(
        [*command, "--name", "alice", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    bob = subprocess.Popen(
        [*command, "--name", "bob"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
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
    assert "killed worker-1" in result.stdout
    assert "90/90 tasks done, every result right: True" in " ".join(result.stdout.split())
    assert processes_using_port(port) == []
