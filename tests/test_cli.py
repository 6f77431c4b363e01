"""The ``zmqkit`` command as people use it: JSON in and out, usage errors that teach, terminals and
pipes, Ctrl-C and closed pipes, help with examples, hz and bw. Each test named after a problem
found in issue 13 failed on the command as it was."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmqkit.demos.calc import Calculator
from zmqkit.patterns import pubsub, rpc

from zmqkit import ConfigError, EventKind, Node, PeerEvent, check_timeout
from zmqkit.cli import build_parser, main
from zmqkit.cli.window import Window
from zmqkit.jsonform import dumps, loads

pytestmark = pytest.mark.slow


def zmqkit(*args: str, timeout: float = 30, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqkit", *args], capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
    )


def start(*args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zmqkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=stdin, text=True,
    )


def read_line(process: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The process's next line of output, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return process.stdout.readline()


@pytest.fixture
def calc() -> Iterator[Node]:
    """A calc node in this process, on this test's private beacon port (ZMQKIT_PORT)."""
    with Node("calc") as node:
        rpc.serve(node, Calculator())
        yield node


@pytest.fixture
def ticks() -> Iterator[Node]:
    """A node publishing {"sym": "ABC", "px": ...} on "ticks" 50 times a second."""
    stop = threading.Event()
    with Node("ticker") as node:
        publisher = pubsub.Publisher(node)

        def publish() -> None:
            while not stop.wait(0.02):
                publisher.publish("ticks", {"sym": "ABC", "px": 101.25, "big": 2**64})

        thread = threading.Thread(target=publish, name="test-ticks")
        thread.start()
        try:
            yield node
        finally:
            stop.set()
            thread.join()


# -- usage errors: exit 2, the subcommand's usage, one line naming the option, no traceback -----

BAD = [
    ("peers", ["--port", "99999"], "--port"),
    ("peers", ["--port", "-5"], "--port"),
    ("peers", ["--port", "0"], "--port"),
    ("peers", ["--port", "abc"], "--port"),
    ("peers", ["--wait", "-1"], "--wait"),
    ("peers", ["--wait", "nan"], "--wait"),
    ("peers", ["--scope", "world"], "--scope"),
    ("peers", ["--scope", "subnet"], "--interface"),
    ("peers", ["--scope", "subnet", "--interface", "zk-nope0"], "--interface"),
    ("peers", ["--interface", "lo"], "--interface"),
    ("peers", ["--seed", ":9"], "--seed"),
    ("peers", ["--seed", "127.0.0.1:70000"], "--seed"),
    ("peers", ["--keys", "k"], "--keys"),
    ("call", [], "NAME"),
    ("call", ["calc"], "METHOD"),
    ("call", ["calc", "add", "hello", "2"], "ARG"),
    ("call", ["calc", "echo", '{"$bytes": 5}'], "ARG"),
    ("call", ["calc", "echo", "NaN"], "ARG"),
    ("call", ["calc", "add", "1", "--timeout", "-1"], "--timeout"),
    ("call", ["calc", "add", "1", "--timeout", "inf"], "--timeout"),
    ("call", ["calc", "add", "--list"], "--list"),
    ("call", ["calc", "add", "1", "--port", "70000"], "--port"),
    ("pub", ["ticks"], "DATA"),
    ("pub", ["ticks", "hello"], "DATA"),
    ("pub", ["ticks", "1", "--rate", "-2"], "--rate"),
    ("pub", ["ticks", "1", "--rate", "0"], "--rate"),
    ("pub", ["ticks", "1", "--count", "-1"], "--count"),
    ("pub", ["ticks", "1", "--count", "1.5"], "--count"),
    ("pub", ["ticks", "1", "--wait", "-1"], "--wait"),
    ("echo", [], "TOPIC"),
    ("echo", ["ticks", "--count", "-1"], "--count"),
    ("echo", ["ticks", "--timeout", "-1"], "--timeout"),
    ("hz", ["ticks", "--port", "70000"], "--port"),
    ("hz", ["ticks", "--window", "1"], "--window"),
    ("hz", ["ticks", "--duration", "-1"], "--duration"),
    ("bw", ["ticks", "--window", "0"], "--window"),
    ("bw", ["ticks", "--duration", "nan"], "--duration"),
    ("keys", [], "ACTION"),
    ("keys new", [], "PATH"),
    ("bench", ["nosuch"], "WORKLOAD"),
    ("bench", ["--rounds", "0"], "--rounds"),
    ("demo", ["nosuch"], "NAME"),
    ("demo", ["--duration", "-1"], "--duration"),
    ("demo", ["ticker", "--rate", "0"], "--rate"),
    ("demo", ["farm", "--workers", "0"], "--workers"),
    ("demo", ["chat", "--script", "/nonexistent/lines.txt"], "--script"),
]


@pytest.mark.parametrize(("command", "args", "option"), BAD,
                         ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_a_bad_value_is_a_usage_error_of_its_subcommand(
    command: str, args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command.split(), *args])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"usage: zmqkit {command} "), captured.err
    errors = [line for line in captured.err.splitlines() if not line.startswith((" ", "usage:"))]
    assert len(errors) == 1, captured.err
    assert errors[0].startswith(f"zmqkit {command}: error: ")
    assert option in errors[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("args", [["peers", "--port", "99999"], ["peers", "--port", "-5"],
                                  ["hz", "ticks", "--port", "70000"], ["peers", "--wait", "-1"]])
def test_the_values_that_gave_tracebacks_exit_2_in_a_real_process(args: list[str]) -> None:
    result = zmqkit(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"usage: zmqkit {args[0]} ")


def test_text_that_is_not_json_gets_a_hint() -> None:
    result = zmqkit("call", "calc", "add", "hello", "2")
    assert result.returncode == 2
    assert "'hello' is not JSON" in result.stderr and "'\"hello\"'" in result.stderr


def test_call_without_arguments_names_only_what_is_required() -> None:
    result = zmqkit("call")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("required: NAME"), result.stderr


def test_subnet_scope_without_an_interface_names_the_flag_not_python() -> None:
    result = zmqkit("peers", "--scope", "subnet")
    assert result.returncode == 2
    assert "--interface IF" in result.stderr and "interface=" not in result.stderr


def test_the_library_refuses_the_values_the_parser_refuses() -> None:
    for port in (0, -5, 65536, 99999, 1.5, "47474", True):
        with pytest.raises(ConfigError, match="port"):
            Node("x", port=port)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scope"):
        Node("x", scope="world")
    with pytest.raises(ConfigError, match="interface"):
        Node("x", scope="subnet")
    with pytest.raises(ConfigError, match="zk-nope0"):
        Node("x", scope="subnet", interface="zk-nope0")
    for seed in (":9", "127.0.0.1:70000", "127.0.0.1:0"):
        with pytest.raises(ConfigError, match="seed"):
            Node("x", seeds=[seed])
    for seconds in (-1, math.nan, math.inf):
        with pytest.raises(ConfigError):
            check_timeout(seconds)
    with pytest.raises(ConfigError):
        Node("x", interval=-1.0)


# -- JSON in, JSON out ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "printed"), [
    (["echo", '"hi"'], '"hi"'),  # was 'hi'
    (["echo", '{"a": null}'], '{"a":null}'),  # was {'a': None}
    (["echo", '{"$bytes": "aGk="}'], '{"$bytes":"aGk="}'),
    (["echo", '{"$set": [1]}'], '{"$set":[1]}'),
    (["echo", '{"$float": "NaN"}'], '{"$float":"NaN"}'),
    (["mul", "9007199254740993", "1"], '{"$int":"9007199254740993"}'),
    (["echo", '{"$map": [[1, "one"]]}'], '{"$map":[[1,"one"]]}'),
    (["add", "-1", "0.5"], "-0.5"),
], ids=["text", "map", "bytes", "set", "nan", "big-int", "int-keys", "negative"])
def test_results_print_as_json_in_a_pipe(calc: Node, args: list[str], printed: str) -> None:
    result = zmqkit("call", "calc", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed + "\n"


def test_a_remote_argument_error_does_not_count_self(calc: Node) -> None:
    result = zmqkit("call", "calc", "add", "1", "2", "3")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "too many positional arguments" in result.stderr
    assert "were given" not in result.stderr  # "takes 3 positional arguments but 4 were given"


def test_the_methods_list_is_one_method_a_line_in_a_pipe(calc: Node) -> None:
    result = zmqkit("call", "calc", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("add(a: float, b: float)") for line in lines), lines
    assert all(line.count("\t") == 2 for line in lines)


def test_echo_prints_json_not_python(ticks: Node) -> None:
    plain = zmqkit("echo", "ticks", "--count", "2", "--timeout", "10")
    assert plain.returncode == 0, plain.stderr
    for line in plain.stdout.splitlines():
        assert re.fullmatch(r'ticks ticker#\d+ \{"sym":"ABC","px":101\.25,'
                            r'"big":\{"\$int":"18446744073709551616"\}\}', line), line
    lines = zmqkit("echo", "ticks", "--count", "2", "--json", "--timeout", "10").stdout
    records = [json.loads(line) for line in lines.splitlines()]
    assert len(records) == 2
    assert records[0]["topic"] == "ticks" and records[0]["publisher"] == "ticker"
    assert loads(json.dumps(records[0]["data"]))["big"] == 2**64


def test_echo_timeout_says_what_did_not_come() -> None:
    result = zmqkit("echo", "nothing", "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stderr == "zmqkit echo: no message on 'nothing' within 0.5 s\n"


def test_a_closed_pipe_ends_echo_quietly(ticks: Node) -> None:
    echo = start("echo", "ticks", "--json")  # as in: zmqkit echo ticks --json | head -2
    try:
        first, second = read_line(echo), read_line(echo)
        assert json.loads(first)["topic"] == json.loads(second)["topic"] == "ticks"
        assert echo.stdout is not None
        echo.stdout.close()
        assert echo.stderr is not None
        errors = echo.stderr.read()
        echo.wait(20)
    finally:
        echo.kill()
        echo.wait()
        if echo.stderr is not None:
            echo.stderr.close()
    assert echo.returncode == 0
    assert errors == ""


# -- terminals and pipes -------------------------------------------------------------------------


def test_peers_in_a_pipe_is_one_unwrapped_line_a_peer_without_boxes() -> None:
    name = "a-node-with-a-name-long-enough-to-pass-eighty-columns-" + "x" * 10
    with Node(name) as node:
        node.advertise("rpc", "tcp://127.0.0.1:5555")
        # --wait is a maximum: it returns once the answers are in (it used to sleep it out)
        result = zmqkit("peers", "--wait", "60", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "name\tuuid\tendpoints\tage"
    [row] = [line for line in lines if line.startswith(name)]
    assert row.split("\t")[1] == str(node.uuid)
    assert "rpc=tcp://127.0.0.1:5555" in row.split("\t")[2].split(" ")
    assert len(row) > 80
    assert not set("┏━┃│╭─") & set(result.stdout)


def in_a_terminal(*args: str, env: dict[str, str] | None = None) -> str:
    """What the command writes to a terminal (a pseudo-terminal here)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "zmqkit", *args], stdin=subprocess.DEVNULL, stdout=terminal,
        stderr=terminal, env={**os.environ, **(env or {})}, close_fds=True,
    )
    os.close(terminal)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, output
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(10) == 0, output
    finally:
        os.close(controller)
        process.kill()
        process.wait()
    return output.decode()


COLOUR = re.compile(r"\x1b\[[\d;]*(?:3[0-8]|9[0-7])[\d;]*m")


def test_a_result_on_a_terminal_is_indented_and_highlighted_unless_no_color(calc: Node) -> None:
    shown = in_a_terminal("call", "calc", "echo", '{"a": [1, null]}')
    plain = re.sub(r"\x1b\[[\d;]*m", "", shown).replace("\r\n", "\n")
    assert '{\n  "a": [\n    1,\n    null\n  ]\n}\n' in plain, repr(shown)
    assert COLOUR.search(shown), repr(shown)
    no_colour = in_a_terminal("call", "calc", "echo", '{"a": [1, null]}', env={"NO_COLOR": "1"})
    assert not COLOUR.search(no_colour), repr(no_colour)  # bold may stay: it is not a colour
    assert '"a": [' in re.sub(r"\x1b\[[\d;]*m", "", no_colour)


def test_bench_prints_a_line_per_step_in_a_pipe() -> None:
    result = zmqkit("bench", "rpc", "--quick", "--rounds", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    steps = result.stderr.splitlines()
    assert steps == ["bench: step 1/2: rpc round 1/1 raw", "bench: step 2/2: rpc round 1/1 zmqkit"]
    assert result.stdout.splitlines()[0] == "\t".join(
        ("workload", "raw pyzmq", "zmqkit", "ratio", "unit", "note")
    )


# -- Ctrl-C: 130 after a clean stop, no traceback ----------------------------------------------


@pytest.mark.parametrize("args", [
    ["peers", "--watch"], ["echo", "ticks"], ["hz", "ticks"], ["bw", "ticks"],
    ["demo", "calc", "--name", "calc-2"], ["demo", "ticker", "--name", "ticker-2"],
    ["demo", "ticker", "--watch"], ["demo", "chat", "--name", "ann"],
], ids=lambda args: " ".join(args))
def test_ctrl_c_exits_130_without_a_traceback(ticks: Node, args: list[str]) -> None:
    left: list[PeerEvent] = []
    ticks.on_event(lambda event: left.append(event) if event.kind is not EventKind.JOINED else None)
    process = start(*args, stdin=subprocess.PIPE)  # a chat reading an open pipe never ends
    try:
        assert read_line(process), "ready"  # its first line: the command is running
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=20)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, errors
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors
    if "--name" in args:  # an announcing node said goodbye: it stopped cleanly
        name = args[args.index("--name") + 1]
        wait_until(lambda: any(event.peer.name == name for event in left), 5, f"{name} left")
        assert all(event.kind is not EventKind.EXPIRED for event in left)


# -- help ------------------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from subcommands(sub, f"{prefix}{name} ")


def test_every_help_ends_with_examples_and_describes_every_positional() -> None:
    found = dict(subcommands(build_parser()))
    assert {"peers", "call", "pub", "echo", "hz", "bw", "keys", "keys new", "bench",
            "demo"} <= set(found)
    for name, parser in found.items():
        text = parser.format_help()
        examples = text.split("\nexamples:\n")[-1].splitlines()
        assert "\nexamples:\n" in text and len(examples) >= 2, name
        assert all(line.startswith("  ") and "#" in line for line in examples), name
        for action in parser._actions:
            if not action.option_strings and action.dest != "help":
                assert action.help, f"{name}: {action.dest} has no description"


# -- hz and bw ------------------------------------------------------------------------------------


def test_the_window_gives_rate_min_max_and_std_of_the_intervals() -> None:
    window = Window(3)
    assert window.figures() is None
    for now, size in ((0.0, 10), (0.1, 20), (0.3, 30), (0.6, 40)):
        window.add(now, size)
    figures = window.figures()  # the last 3 arrivals: 0.1, 0.3, 0.6
    assert figures is not None
    assert figures.messages == 3
    assert figures.rate == pytest.approx(2 / 0.5)
    assert (figures.min, figures.max) == (pytest.approx(0.2), pytest.approx(0.3))
    assert figures.std == pytest.approx(0.05)
    assert figures.bytes_per_second == pytest.approx((30 + 40) / 0.5)
    assert (figures.min_size, figures.max_size, figures.mean_size) == (20, 40, 30)
    with pytest.raises(ValueError):
        Window(1)


def test_hz_and_bw_print_a_line_a_second_in_a_pipe(ticks: Node) -> None:
    hz = zmqkit("hz", "ticks", "--window", "20", "--duration", "3")
    assert hz.returncode == 0, hz.stderr
    figures = re.compile(r"rate \d+\.\d\d msg/s  min \d\.\d{4} s  max \d\.\d{4} s  "
                         r"std \d\.\d{4} s  window (\d+)")
    measured = [figures.fullmatch(line) for line in hz.stdout.splitlines()]
    assert any(measured), hz.stdout
    assert all(int(m.group(1)) <= 20 for m in measured if m)
    records = zmqkit("hz", "ticks", "--duration", "2.5", "--json").stdout.splitlines()
    assert any({"rate", "min", "max", "std", "window"} <= json.loads(line).keys()
               for line in records), records
    bw = zmqkit("bw", "ticks", "--duration", "2.5")
    assert bw.returncode == 0, bw.stderr
    assert any(re.match(r"\d+(\.\d\d)? (B|KiB)/s  mean \d+ B  min \d+ B  max \d+ B  window \d+",
                        line) for line in bw.stdout.splitlines()), bw.stdout


# -- the JSON form ---------------------------------------------------------------------------------

hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=5,
)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.uuids() | st.frozensets(hashables, max_size=3)
    | st.datetimes(timezones=st.just(datetime.timezone.utc)),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(), inner, max_size=4)
    | st.dictionaries(hashables, inner, max_size=3),
    max_leaves=12,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_every_wire_value_has_a_reversible_json_form(value: Any) -> None:
    text = dumps(value)
    json.loads(text)  # plain JSON
    assert loads(text) == value


def test_nan_and_infinities_round_trip() -> None:
    assert math.isnan(loads(dumps(math.nan)))
    assert loads(dumps([math.inf, -math.inf])) == [math.inf, -math.inf]
