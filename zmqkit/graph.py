"""The picture of a mesh: who serves, publishes, subscribes and calls whom, from node reports.

``build`` turns the reports that nodes give (``Node.report``, asked with ``introspect.ask_nodes``)
into a ``Graph`` of vertices (nodes, topics, farms, groups, state maps) and edges (calls,
publishes, subscribes, submits, works, joins, replicates). ``to_dot`` writes it as Graphviz text;
``to_svg`` lays it out itself, in layers from left to right, and writes a self-contained SVG that
a browser opens with nothing else installed. Pure: no sockets, no clock.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Edge", "Graph", "Vertex", "build", "to_dot", "to_svg"]

# what each part kind adds to the picture: the kind of vertex it points at, and the edge's verb
CHANNELS = {
    "pubsub.Publisher": ("topic", "publishes"),
    "pubsub.Subscriber": ("topic", "subscribes"),
    "pubsub.AsyncSubscriber": ("topic", "subscribes"),
    "farm.Submitter": ("farm", "submits"),
    "farm.AsyncSubmitter": ("farm", "submits"),
    "farm.Worker": ("farm", "works"),
    "groups.Groups": ("group", "joins"),
    "groups.AsyncGroups": ("group", "joins"),
    "state.State": ("map", "replicates"),
    "state.AsyncState": ("map", "replicates"),
}
CALLERS = frozenset({
    "rpc.Client", "rpc.AsyncClient", "failover.FailoverClient", "failover.AsyncFailoverClient",
    "survey.Surveyor", "survey.AsyncSurveyor",
})
# an edge that points at the node rather than away from it
INBOUND = frozenset({"subscribes", "works"})


@dataclass
class Vertex:
    key: str
    label: str
    kind: str  # "node", "topic", "farm", "group" or "map"
    lines: list[str] = field(default_factory=list)  # detail under the label


@dataclass
class Edge:
    source: str
    target: str
    verb: str  # "calls", "publishes", "subscribes", "submits", "works", "joins", "replicates"
    count: int = 0  # calls or messages so far, where the part counts them
    reporter: str = ""  # the node whose part counts them
    rate: float | None = None  # per second, between two readings

    @property
    def label(self) -> str:
        """What the edge carried ("3 calls", "240 msgs, 20/s"), or "" when not counted."""
        if not self.count:
            return ""
        noun = "calls" if self.verb == "calls" else "msgs"
        rate = f", {self.rate:,.3g}/s" if self.rate is not None else ""
        return f"{self.count:,} {noun}{rate}"


@dataclass
class Graph:
    vertices: dict[str, Vertex] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def vertex(self, key: str, label: str, kind: str) -> Vertex:
        """The vertex ``key``, added the first time it is named."""
        if key not in self.vertices:
            self.vertices[key] = Vertex(key, label, kind)
        return self.vertices[key]


def build(reports: Iterable[Mapping[str, Any]],
          previous: Iterable[Mapping[str, Any]] | None = None) -> Graph:
    """The graph of the nodes that answered (entries with an ``error`` are left out); given
    the ``previous`` reports of the same nodes, each counted edge gets its rate since then,
    over the time that passed on the node that counts it."""
    reports = list(reports)
    graph = _graph(reports)
    if previous is not None:
        previous = list(previous)
        before = {(edge.source, edge.target, edge.verb): edge for edge in _graph(previous).edges}
        now, then = _uptimes(reports), _uptimes(previous)
        for edge in graph.edges:
            old = before.get((edge.source, edge.target, edge.verb))
            seconds = now.get(edge.reporter, 0.0) - then.get(edge.reporter, 0.0)
            if old is not None and edge.count and seconds > 0:
                edge.rate = max(0, edge.count - old.count) / seconds
    return graph


def _uptimes(reports: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    return {f"node:{report['uuid']}": float(report.get("uptime", 0.0)) for report in reports
            if "error" not in report}


def _graph(reports: Iterable[Mapping[str, Any]]) -> Graph:
    graph = Graph()
    answered = [report for report in reports if "error" not in report]
    by_name: dict[str, list[str]] = defaultdict(list)
    for report in answered:
        key = f"node:{report['uuid']}"
        graph.vertex(key, str(report["name"]), "node").lines.append(str(report["uuid"])[:8])
        by_name[str(report["name"])].append(key)
    calls: list[tuple[str, Mapping[str, Any]]] = []
    for report in answered:
        node = f"node:{report['uuid']}"
        for part in report.get("parts", []):
            kind = part.get("kind", "")
            if kind == "rpc.Server":
                methods = sorted(part.get("methods", {}))
                graph.vertices[node].lines.append("serves " + ", ".join(methods))
            elif kind in CALLERS:
                calls.append((node, part))
            elif kind in CHANNELS:
                _add_channels(graph, node, kind, part)
    for caller, part in calls:
        for callee in by_name.get(str(part.get("target")), []):
            graph.edges.append(Edge(caller, callee, "calls", int(part.get("calls", 0)), caller))
    return graph


def _add_channels(graph: Graph, node: str, kind: str, part: Mapping[str, Any]) -> None:
    vertex_kind, verb = CHANNELS[kind]
    names: Mapping[str, Any] | list[Any]
    if vertex_kind == "topic":
        names = part.get("topics", {})  # a publisher: topic -> counters; a subscriber: a list
    else:
        names = [part.get("name")] if vertex_kind != "group" else part.get("groups", [])
    for name in names:
        if not isinstance(name, str):
            continue
        key = f"{vertex_kind}:{name}"
        graph.vertex(key, name, vertex_kind)
        count = 0
        if isinstance(names, Mapping):
            count = int(names[name].get("published", 0))
        source, target = (key, node) if verb in INBOUND else (node, key)
        graph.edges.append(Edge(source, target, verb, count, node))


# -- Graphviz ------------------------------------------------------------------------------------

DOT_SHAPES = {"node": "box", "topic": "ellipse", "farm": "hexagon", "group": "octagon",
              "map": "cylinder"}


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text (``dot -Tsvg``), left to right."""
    lines = ["digraph zmqkit {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for vertex in graph.vertices.values():
        lines.append(f"  {_dot_text(vertex.key)} [label={_dot_text(vertex.label, *vertex.lines)}, "
                     f"shape={DOT_SHAPES[vertex.kind]}];")
    for edge in graph.edges:
        label = f", label={_dot_text(edge.label)}" if edge.label else ""
        style = ", style=dashed" if edge.verb != "calls" else ""
        lines.append(f"  {_dot_text(edge.source)} -> {_dot_text(edge.target)} "
                     f"[tooltip={_dot_text(edge.verb)}{label}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(*lines: str) -> str:
    """A quoted DOT string of ``lines``, one under the other."""
    escaped = (line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


# -- SVG -----------------------------------------------------------------------------------------

CHAR_WIDTH = 7.2  # px per character at FONT_SIZE: wide enough for most sans-serif fonts
FONT_SIZE = 12
LINE_HEIGHT = 16
PAD = 10
COLUMN_GAP = 110
ROW_GAP = 26
MARGIN = 24
FILLS = {"node": "#dbeafe", "topic": "#fef3c7", "farm": "#dcfce7", "group": "#fce7f3",
         "map": "#ede9fe"}
STROKES = {"node": "#1d4ed8", "topic": "#b45309", "farm": "#15803d", "group": "#be185d",
           "map": "#6d28d9"}


@dataclass
class _Box:
    x: float
    y: float
    width: float
    height: float
    column_right: float  # where the widest box of its column ends: edges leave from there


def layers(graph: Graph) -> list[list[str]]:
    """Columns of vertex keys, left to right: each edge points to a later column where the
    graph allows it (the longest path from a source, with cycles broken where a walk from the
    sources first closes them), and each column is ordered to put linked vertices side by side
    (a few sweeps of the barycenter heuristic)."""
    keys = list(graph.vertices)
    successors: dict[str, list[str]] = defaultdict(list)
    for edge in graph.edges:
        if edge.source != edge.target:
            successors[edge.source].append(edge.target)
    forward = _without_cycles(keys, successors)
    depth = dict.fromkeys(keys, 0)
    for key in _topological(keys, forward):
        for after in forward[key]:
            depth[after] = max(depth[after], depth[key] + 1)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=0) + 1)]
    for key in keys:
        columns[depth[key]].append(key)
    neighbours: dict[str, set[str]] = defaultdict(set)
    for source, targets in successors.items():
        for target in targets:
            neighbours[source].add(target)
            neighbours[target].add(source)
    for _ in range(4):
        for index in [*range(1, len(columns)), *range(len(columns) - 2, -1, -1)]:
            position = {key: rank for column in columns for rank, key in enumerate(column)}
            columns[index].sort(key=lambda key: _barycenter(key, neighbours, position))
    return columns


def _without_cycles(keys: list[str], successors: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The edges less those that close a cycle in a depth-first walk."""
    forward: dict[str, list[str]] = defaultdict(list)
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    for root in keys:
        if root in state:
            continue
        stack = [(root, iter(successors.get(root, ())))]
        state[root] = 1
        while stack:
            key, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[key] = 2
                stack.pop()
            elif state.get(child) == 1:
                continue  # a back edge: left out
            else:
                forward[key].append(child)
                if child not in state:
                    state[child] = 1
                    stack.append((child, iter(successors.get(child, ()))))
    return forward


def _topological(keys: list[str], forward: Mapping[str, list[str]]) -> list[str]:
    incoming = dict.fromkeys(keys, 0)
    for targets in forward.values():
        for target in targets:
            incoming[target] += 1
    ready = [key for key in keys if incoming[key] == 0]
    order = []
    while ready:
        key = ready.pop(0)
        order.append(key)
        for target in forward.get(key, ()):
            incoming[target] -= 1
            if incoming[target] == 0:
                ready.append(target)
    return order


def _barycenter(key: str, neighbours: Mapping[str, set[str]], position: Mapping[str, int]) -> float:
    linked = [position[other] for other in neighbours.get(key, ())]
    return sum(linked) / len(linked) if linked else position[key]


def to_svg(graph: Graph, title: str = "zmqkit mesh") -> str:
    """A self-contained SVG of the graph, laid out in columns, readable in any browser."""
    columns = layers(graph)
    boxes: dict[str, _Box] = {}
    x = float(MARGIN)
    height = 0.0
    for column in columns:
        width = max((_width(graph.vertices[key]) for key in column), default=0.0)
        y = MARGIN + 2.0 * LINE_HEIGHT  # below the title
        for key in column:
            lines = 1 + len(graph.vertices[key].lines)
            box_height = lines * LINE_HEIGHT + PAD
            boxes[key] = _Box(x, y, _width(graph.vertices[key]), box_height, x + width)
            y += box_height + ROW_GAP
        height = max(height, y)
        x += width + COLUMN_GAP
    total_width = max(x - COLUMN_GAP + MARGIN, 320.0)
    total_height = height + MARGIN + LINE_HEIGHT * 2  # room for the legend
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width:.0f}" '
        f'height="{total_height:.0f}" viewBox="0 0 {total_width:.0f} {total_height:.0f}" '
        f'font-family="Helvetica, Arial, sans-serif" font-size="{FONT_SIZE}">',
        f"<title>{html.escape(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#475569"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN}" y="{MARGIN + FONT_SIZE}" font-size="{FONT_SIZE + 4}" '
        f'font-weight="bold" fill="#0f172a">{html.escape(title)}</text>',
    ]
    leaving = Counter(edge.source for edge in graph.edges)
    arriving = Counter(edge.target for edge in graph.edges)
    for edge in graph.edges:
        # a label halfway, or nearer the end that is not shared with other edges
        at = 0.75 if leaving[edge.source] > 1 else 0.25 if arriving[edge.target] > 1 else 0.5
        parts.append(_edge_svg(edge, boxes[edge.source], boxes[edge.target], at))
    parts.extend(_vertex_svg(graph.vertices[key], box) for key, box in boxes.items())
    parts.append(_legend(MARGIN, total_height - MARGIN))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _width(vertex: Vertex) -> float:
    longest = max(len(text) for text in [vertex.label, *vertex.lines])
    return longest * CHAR_WIDTH + 2 * PAD


def _vertex_svg(vertex: Vertex, box: _Box) -> str:
    radius = 4 if vertex.kind == "node" else box.height / 2 if vertex.kind == "topic" else 10
    middle = box.x + box.width / 2
    texts = [
        f'<text x="{middle:.1f}" y="{box.y + PAD / 2 + (i + 1) * LINE_HEIGHT - 4:.1f}" '
        f'text-anchor="middle" fill="#0f172a"{weight}>{html.escape(text)}</text>'
        for i, text in enumerate([vertex.label, *vertex.lines])
        for weight in [' font-weight="bold"' if i == 0 else ""]
    ]
    return (
        f'<g class="{vertex.kind}"><title>{html.escape(vertex.kind)} {html.escape(vertex.label)}'
        f'</title><rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" '
        f'height="{box.height:.1f}" rx="{radius:.1f}" fill="{FILLS[vertex.kind]}" '
        f'stroke="{STROKES[vertex.kind]}" stroke-width="1.5"/>' + "".join(texts) + "</g>"
    )


def _edge_svg(edge: Edge, source: _Box, target: _Box, at: float) -> str:
    """A curve from the right side of ``source`` to the left side of ``target`` (around the
    right, to the target's right side, when the target is not further right), labelled at the
    fraction ``at`` of its way."""
    start, y1 = source.x + source.width, source.y + source.height / 2
    x1 = source.column_right  # straight out of the column first, never across its boxes
    x2, y2 = target.x, target.y + target.height / 2
    if x2 <= x1:
        x2 = target.column_right
        reach = max(x1, x2) + COLUMN_GAP / 2
        control1, control2 = (reach, y1), (reach, y2)
    else:
        bend = (x2 - x1) / 2
        control1, control2 = (x1 + bend, y1), (x2 - bend, y2)
    path = (f"M {start:.1f} {y1:.1f} L {x1:.1f} {y1:.1f} C {control1[0]:.1f} {control1[1]:.1f}, "
            f"{control2[0]:.1f} {control2[1]:.1f}, {x2:.1f} {y2:.1f}")
    if x2 == target.column_right and x2 > target.x + target.width:  # back into a column
        path += f" L {target.x + target.width:.1f} {y2:.1f}"
    label_x, label_y = _bezier((x1, y1), control1, control2, (x2, y2), at)
    dash = "" if edge.verb == "calls" else ' stroke-dasharray="5 3"'
    words = edge.label or edge.verb
    return (
        f'<g class="edge {edge.verb}"><title>{html.escape(edge.verb)} {html.escape(edge.label)}'
        f'</title><path d="{path}" fill="none" stroke="#475569" stroke-width="1.4"{dash} '
        f'marker-end="url(#arrow)"/>'
        f'<text x="{label_x:.1f}" y="{label_y - 3:.1f}" text-anchor="middle" font-size="10" '
        f'fill="#334155" stroke="white" stroke-width="3" paint-order="stroke">'
        f"{html.escape(words)}</text></g>"
    )


def _bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float],
            p3: tuple[float, float], t: float) -> tuple[float, float]:
    """The point at ``t`` (0 to 1) along a cubic Bézier curve."""
    u = 1 - t
    weights = (u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t)
    points = (p0, p1, p2, p3)
    return (sum(w * p[0] for w, p in zip(weights, points, strict=True)),
            sum(w * p[1] for w, p in zip(weights, points, strict=True)))


def _legend(x: float, y: float) -> str:
    items = []
    for kind in ("node", "topic", "farm", "group", "map"):
        items.append(
            f'<rect x="{x:.0f}" y="{y - 10:.0f}" width="12" height="12" rx="2" '
            f'fill="{FILLS[kind]}" stroke="{STROKES[kind]}"/>'
            f'<text x="{x + 16:.0f}" y="{y:.0f}" fill="#334155">{kind}</text>'
        )
        x += 16 + CHAR_WIDTH * len(kind) + 18
    items.append(f'<text x="{x:.0f}" y="{y:.0f}" fill="#334155">solid: calls; dashed: '
                 "messages</text>")
    return '<g class="legend">' + "".join(items) + "</g>"
