"""Smoke runs of the discovery benchmarks, with tiny counts: they work, and what they report
holds together. The figures themselves come from full runs (docs/discovery.md), not from here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zmqkit.contacts import PEERS_PER_INTERVAL
from zmqkit.simulate import simulate

SCRIPT = Path(__file__).resolve().parent / "discovery_scale.py"


def test_the_simulation_reaches_a_full_mesh_and_keeps_it() -> None:
    small = simulate(40, observers=4)
    assert small.observers_complete and small.expired == 0
    assert small.interval_reached_s == 1.0
    # a simulated clock: the mesh is full within one interval of the last start
    assert small.full_mesh_after_last_start_s <= 1.0 + 0.05


def test_a_large_simulated_mesh_stretches_its_interval_and_bounds_what_a_node_hears() -> None:
    large = simulate(PEERS_PER_INTERVAL + 40, observers=3, seed=2)
    assert large.interval_reached_s == 2.0, "past PEERS_PER_INTERVAL peers the interval doubles"
    assert large.observers_complete and large.expired == 0, "the interval header keeps them"
    assert large.received_per_node_per_s <= PEERS_PER_INTERVAL


def test_the_socket_benchmark_runs_on_one_host() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "host", "--nodes", "6", "--processes", "2", "--idle", "0.2"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["nodes"] == 6 and figures["processes"] == 2
    assert figures["fewest_peers_seen"] == 5
    assert figures["idle_cpu_per_node_percent"]["max"] >= 0
