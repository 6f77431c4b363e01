"""``zmqkit bench`` works and says what it measured (never how fast: that is for benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_bench_quick_json_lists_every_workload_with_its_ratio() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqkit", "bench", "all", "--quick", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["workload"] for row in rows] == [
        "rpc", "async-rpc", "pubsub", "pubsub-batched", "large", "fanout", "clients",
        "latency-p50", "latency-p99", "discovery-5", "idle-cpu",
    ]
    lower_is_better = ("discovery", "idle", "latency")  # their ratio is raw / ours
    for row in rows:
        assert set(row) >= {"workload", "raw", "ours", "ratio", "unit"}
        assert row["raw"] > 0 and row["ours"] > 0, row
        assert row["ratio"] == pytest.approx(
            row["raw"] / row["ours"] if row["workload"].startswith(lower_is_better)
            else row["ours"] / row["raw"]
        )


def test_the_command_offers_every_workload_of_the_bench() -> None:
    from zmqkit import bench
    from zmqkit.cli.benchmark import CHOICES

    assert (*bench.WORKLOADS, "codec", "all") == CHOICES


def test_bench_table_names_the_columns() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqkit", "bench", "rpc", "--quick", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    for column in ("workload", "raw pyzmq", "zmqkit", "ratio", "unit"):
        assert column in result.stdout


def test_the_rpc_budget_script_measures_the_server_path() -> None:
    script = Path(__file__).with_name("rpc_budget.py")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "µs per call" in result.stdout
