"""The demo nodes and the show, run as a user runs them: headless, in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_udp_port

pytestmark = pytest.mark.slow


def zmqkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zmqkit", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


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
        if "--port" in words and words[words.index("--port") + 1: words.index("--port") + 2] == [str(port)]:
            found.append(" ".join(words))
    return found


@pytest.mark.parametrize("demo", [["calc"], ["ticker"], ["ticker", "--watch"]],
                         ids=["calc", "ticker", "ticker-watch"])
def test_each_demo_node_runs_headless_and_ends_by_itself(demo: list[str]) -> None:
    port = free_udp_port()
    result = zmqkit("demo", *demo, "--duration", "3", "--port", str(port), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert processes_using_port(port) == []


def test_calc_node_prints_each_call_as_a_timestamped_line() -> None:
    port = free_udp_port()
    node = subprocess.Popen([sys.executable, "-m", "zmqkit", "demo", "calc", "--duration", "6",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        called = zmqkit("call", "calc", "mul", "6", "7", "--port", str(port), "--timeout", "5")
        assert called.returncode == 0, called.stderr
        assert called.stdout.strip() == "42"
        output, errors = node.communicate(timeout=20)
    finally:
        node.kill()
        node.wait()
    assert node.returncode == 0, errors
    assert any(" mul 6, 7 42 " in line for line in output.splitlines()), output


def test_the_show_ends_by_itself_with_a_summary_and_leaves_nothing_running() -> None:
    port = free_udp_port()
    started = time.monotonic()
    result = zmqkit("demo", "--port", str(port), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr + result.stdout
    assert "zmqkit show: summary" in result.stdout
    for act in ("discovery", "rpc", "pub/sub", "leave and expire"):
        assert act in result.stdout
    assert "RemoteError ZeroDivisionError" in result.stdout
    assert "Timeout after 0.5 s" in result.stdout
    assert processes_using_port(port) == []


def test_ctrl_c_stops_the_show_and_every_node_it_started_without_a_traceback() -> None:
    port = free_udp_port()
    show = subprocess.Popen([sys.executable, "-m", "zmqkit", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
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
