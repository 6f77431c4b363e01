"""CPU per call on the RPC server's receive-handle-reply path, without sockets.

    python tests/rpc_budget.py          # the thread CPU of Server._handle per call, in µs

Runs ``Server._handle`` in a loop on one encoded request with a router that drops what it is
given, so the figure is zmqkit's own Python per call (decode, dispatch, the handler, encode,
introspection's counting), not libzmq's or the network's. Steadier than a throughput run on a
busy machine: compare two trees with it, alternately, on the same machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from zmqkit.patterns import rpc

import zmqkit
from zmqkit import codec

PAYLOAD = {"seq": 0, "sym": "ABC", "px": 101.25, "qty": 100}
CALLS = 50_000
RUNS = 7


class DroppingRouter:
    """Takes a reply as a ROUTER would, and drops it."""

    def try_send_multipart(self, frames: list[bytes]) -> bool:
        return True


def _echo(x: Any) -> Any:
    return x


def main() -> None:
    with zmqkit.Node("budget", announce=False) as node:
        server = rpc.Server(node, [_echo])
        frame = codec.encode_request(1, "_echo", [PAYLOAD], {})
        router = DroppingRouter()
        runs = []
        for _ in range(RUNS):
            started = time.thread_time()
            for _ in range(CALLS):
                server._handle(router, [b"caller", frame])  # type: ignore[arg-type]
            runs.append(1e6 * (time.thread_time() - started) / CALLS)
    print(f"Server._handle: {min(runs):.2f} µs per call (best of {RUNS}), "
          f"median {statistics.median(runs):.2f}")


if __name__ == "__main__":
    main()
