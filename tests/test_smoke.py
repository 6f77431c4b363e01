"""The front doors work: the packages import, the command answers, the demo runs."""

from __future__ import annotations

import subprocess
import sys


def test_packages_import() -> None:
    import zmqkit
    from zmqkit import demos, patterns

    for package in (zmqkit, patterns):
        assert len(set(package.__all__)) == len(package.__all__), "each name exported once"
        assert all(hasattr(package, name) for name in package.__all__)
    assert demos is not None


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqkit", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_help_lists_the_subcommands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("peers", "demo"):
        assert command in result.stdout


def test_usage_error_exits_2() -> None:
    assert run_cli("no-such-command").returncode == 2
