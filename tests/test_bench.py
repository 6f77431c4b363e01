"""``zmqkit bench`` works and says what it measured (never how fast: that is for benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_quick_json_lists_every_workload_with_its_ratio() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqkit", "bench", "all", "--quick", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["workload"] for row in rows] == [
        "rpc", "async-rpc", "pubsub", "pubsub-batched", "large", "discovery-5", "idle-cpu",
    ]
    for row in rows:
        assert set(row) >= {"workload", "raw", "ours", "ratio", "unit"}
        assert row["raw"] > 0 and row["ours"] > 0, row
        assert row["ratio"] == pytest.approx(
            row["ours"] / row["raw"] if not row["workload"].startswith(("discovery", "idle"))
            else row["raw"] / row["ours"]
        )


def test_bench_table_names_the_columns() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zmqkit", "bench", "rpc", "--quick", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    for column in ("workload", "raw pyzmq", "zmqkit", "ratio", "unit"):
        assert column in result.stdout
