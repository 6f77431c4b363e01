"""What a mesh serves, publishes and does, read from its nodes' reports: pure functions.

The reports come from ``introspect.ask_nodes``; these turn them into the rows that ``zmqkit top``,
``zmqkit topics`` and ``zmqkit services`` print. A rate needs two readings: given the previous
rows and the seconds between, ``top_rows`` adds per-second figures; without them it gives totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["by_uuid", "services", "top_rows", "topics"]

SERVERS = frozenset({"rpc.Server"})
PUBLISHERS = frozenset({"pubsub.Publisher"})
SUBSCRIBERS = frozenset({"pubsub.Subscriber", "pubsub.AsyncSubscriber"})


def _answered(reports: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [report for report in reports if "error" not in report]


def _parts(report: Mapping[str, Any], kinds: frozenset[str]) -> list[Mapping[str, Any]]:
    return [part for part in report.get("parts", []) if part.get("kind") in kinds]


def services(reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every RPC service by name: its nodes, its methods, and the calls they served."""
    found: dict[str, dict[str, Any]] = {}
    for report in _answered(reports):
        for server in _parts(report, SERVERS):
            name = str(server.get("service", report["name"]))
            entry = found.setdefault(name, {"service": name, "nodes": [], "methods": {}})
            entry["nodes"].append({"name": report["name"], "uuid": report["uuid"]})
            for method, counters in server.get("methods", {}).items():
                total = entry["methods"].setdefault(method, {"calls": 0, "errors": 0})
                total["calls"] += int(counters.get("calls", 0))
                total["errors"] += int(counters.get("errors", 0))
    return [found[name] for name in sorted(found)]


def topics(reports: Iterable[Mapping[str, Any]],
           previous: Iterable[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every topic published or subscribed: its publishers, its subscribers, and the messages
    published so far; given the ``previous`` reports, its ``rate`` in messages per second since
    then too (each publisher's count over the time that passed on it)."""
    found: dict[str, dict[str, Any]] = {}
    before = {str(report["uuid"]): report for report in _answered(previous or [])}

    def entry(topic: str) -> dict[str, Any]:
        return found.setdefault(topic, {"topic": topic, "publishers": [], "subscribers": [],
                                        "published": 0})

    for report in _answered(reports):
        node = {"name": report["name"], "uuid": report["uuid"]}
        then = before.get(str(report["uuid"]))
        seconds = float(report.get("uptime", 0.0)) - float(then.get("uptime", 0.0)) if then else 0
        for publisher in _parts(report, PUBLISHERS):
            for topic, counters in publisher.get("topics", {}).items():
                published = int(counters.get("published", 0))
                entry(topic)["publishers"].append(node)
                entry(topic)["published"] += published
                if then is not None and seconds > 0:
                    earlier = _published(then, topic)
                    rate = max(0, published - earlier) / seconds
                    entry(topic)["rate"] = round(entry(topic).get("rate", 0.0) + rate, 1)
        for subscriber in _parts(report, SUBSCRIBERS):
            for topic in subscriber.get("topics", []):
                entry(topic)["subscribers"].append(node)
    return [found[topic] for topic in sorted(found)]


def _published(report: Mapping[str, Any], topic: str) -> int:
    return sum(int(publisher.get("topics", {}).get(topic, {}).get("published", 0))
               for publisher in _parts(report, PUBLISHERS))


def top_rows(reports: Iterable[Mapping[str, Any]],
             previous: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per node: calls served and failed, latency, messages out and in, drops, peers;
    with ``previous`` (the last rows by uuid), the rates since then too, over the time that
    passed on that node (its uptime then and now). A node that did not answer is a row with
    its ``error``."""
    rows = []
    for report in reports:
        if "error" in report:
            rows.append({"name": report["name"], "uuid": report["uuid"],
                         "error": report["error"]})
            continue
        row = _totals(report)
        before = (previous or {}).get(str(report["uuid"]))
        seconds = row["uptime"] - before.get("uptime", 0.0) if before is not None else 0.0
        if before is not None and seconds > 0 and "error" not in before:
            for counter in ("calls", "published", "received"):
                row[f"{counter}/s"] = round(max(0, row[counter] - before[counter]) / seconds, 1)
        rows.append(row)
    return rows


def _totals(report: Mapping[str, Any]) -> dict[str, Any]:
    calls = errors = published = received = dropped = 0
    p50 = p99 = 0.0
    for part in report.get("parts", []):
        kind = part.get("kind")
        if kind in SERVERS:
            for counters in part.get("methods", {}).values():
                calls += int(counters.get("calls", 0))
                errors += int(counters.get("errors", 0))
            latency = part.get("latency", {})  # over every method's calls
            p50 = max(p50, float(latency.get("p50", 0.0)))
            p99 = max(p99, float(latency.get("p99", 0.0)))
        elif kind in PUBLISHERS:
            published += sum(int(c.get("published", 0)) for c in part.get("topics", {}).values())
        elif kind in SUBSCRIBERS:
            received += int(part.get("received", 0))
        dropped += _dropped(part.get("stats", {}))
    dropped += _dropped(report.get("beacon", {}))
    return {
        "name": report["name"], "uuid": report["uuid"], "pid": report.get("pid"),
        "uptime": report.get("uptime", 0.0), "parts": len(report.get("parts", [])),
        "peers": len(report.get("peers", [])), "calls": calls, "errors": errors,
        "p50": p50, "p99": p99, "published": published, "received": received,
        "dropped": dropped,
    }


def _dropped(stats: Mapping[str, Any]) -> int:
    """What a part's counters say it dropped, whatever the reason."""
    return sum(int(value) for key, value in stats.items()
               if key.startswith("dropped") and isinstance(value, int))


def by_uuid(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Rows keyed by node uuid: the ``previous`` of the next ``top_rows``."""
    return {str(row["uuid"]): row for row in rows}
