"""Text and graph renderings of an artifact's lineage tree (`lmforge lineage`, the run report)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def format_lineage(
    node: dict[str, Any], prefix: str = "", is_last: bool = True, is_root: bool = True
) -> list[str]:
    """Render a lineage tree as indented text lines."""
    connector = "" if is_root else ("`-- " if is_last else "|-- ")
    commit = node["code"].get("git_commit") or "unknown"
    dirty = "+dirty" if node["code"].get("git_dirty") else ""
    lines = [
        f"{prefix}{connector}{node['id']}  [{node['stage']}]  {node['created_at']}  code {commit[:12]}{dirty}"
    ]
    child_prefix = prefix if is_root else prefix + ("    " if is_last else "|   ")
    children: list[tuple[str, Any]] = [("input", item) for item in node["inputs"]]
    children += [("artifact", parent) for parent in node["parents"]]
    for index, (kind, child) in enumerate(children):
        last = index == len(children) - 1
        if kind == "input":
            digest = (
                f"sha256 {child['sha256'][:16]}  {child['size']} bytes"
                if child["sha256"]
                else "(remote dataset)"
            )
            lines.append(f"{child_prefix}{'`-- ' if last else '|-- '}{child['uri']}  {digest}")
        else:
            lines.extend(format_lineage(child, child_prefix, last, is_root=False))
    return lines


# -- graphs: DOT (Graphviz), Mermaid and an inline SVG for the HTML report ---------------------------


@dataclass(frozen=True)
class GraphNode:
    key: str  # an artifact id, or "input:<uri>@<sha256>" for a raw input
    label: str
    detail: str  # the artifact id, or the input's digest
    is_input: bool
    layer: int  # raw inputs 0; an artifact one more than its deepest parent or input


@dataclass
class LineageGraph:
    """Lineage trees merged into one graph: a shared ancestor or input is one node."""

    nodes: dict[str, GraphNode] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)  # (from, to), data flow direction


def lineage_graph(trees: dict[str, Any] | Iterable[dict[str, Any]]) -> LineageGraph:
    """The graph of one lineage tree (`ArtifactStore.lineage`) or of several (a run's artifacts)."""
    graph = LineageGraph()
    edges: set[tuple[str, str]] = set()
    for tree in [trees] if isinstance(trees, dict) else trees:
        _add_tree(graph, edges, tree)
    graph.edges = sorted(edges)
    return graph


def _add_tree(graph: LineageGraph, edges: set[tuple[str, str]], node: dict[str, Any]) -> str:
    if node["id"] in graph.nodes:
        return str(node["id"])
    layers = [0]
    for item in node["inputs"]:
        key = f"input:{item['uri']}@{item.get('sha256') or ''}"
        digest = f"sha256 {item['sha256'][:12]}" if item.get("sha256") else "remote dataset"
        graph.nodes.setdefault(key, GraphNode(key, item["uri"], digest, True, 0))
        edges.add((key, node["id"]))
    for parent in node["parents"]:
        parent_key = _add_tree(graph, edges, parent)
        layers.append(graph.nodes[parent_key].layer)
        edges.add((parent_key, node["id"]))
    graph.nodes[node["id"]] = GraphNode(node["id"], node["stage"], node["id"], False, max(layers) + 1)
    return str(node["id"])


def _ordered(graph: LineageGraph) -> list[GraphNode]:
    return sorted(graph.nodes.values(), key=lambda node: (node.layer, node.label, node.key))


def format_dot(tree: dict[str, Any] | Iterable[dict[str, Any]]) -> str:
    """Graphviz DOT of a lineage tree (or trees): artifacts as boxes, raw inputs as cylinders."""
    graph = lineage_graph(tree)

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
    for node in _ordered(graph):
        shape = "cylinder" if node.is_input else "box"
        label = quote(node.label)[:-1] + "\\n" + quote(node.detail)[1:]  # DOT's line break
        lines.append(f"  {quote(node.key)} [shape={shape}, label={label}];")
    lines += [f"  {quote(source)} -> {quote(target)};" for source, target in graph.edges]
    return "\n".join([*lines, "}"]) + "\n"


def format_mermaid(tree: dict[str, Any] | Iterable[dict[str, Any]]) -> str:
    """A Mermaid flowchart of a lineage tree (or trees): raw inputs as cylinders."""
    graph = lineage_graph(tree)
    ids = {node.key: f"n{index}" for index, node in enumerate(_ordered(graph))}

    def text(value: str) -> str:  # Mermaid's entity codes, inside a quoted label
        return value.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")

    lines = ["flowchart LR"]
    for node in _ordered(graph):
        label = f'"{text(node.label)}<br/>{text(node.detail)}"'
        lines.append(f"  {ids[node.key]}[({label})]" if node.is_input else f"  {ids[node.key]}[{label}]")
    lines += [f"  {ids[source]} --> {ids[target]}" for source, target in graph.edges]
    return "\n".join(lines) + "\n"


SVG_BOX_WIDTH, SVG_BOX_HEIGHT, SVG_COLUMN_GAP, SVG_ROW_GAP, SVG_MARGIN = 230, 38, 50, 14, 10
SVG_LABEL_CHARS = 34


def format_svg(tree: dict[str, Any] | Iterable[dict[str, Any]]) -> str:
    """A self-contained SVG of a lineage tree (or trees): one column per layer, data flowing right."""
    graph = lineage_graph(tree)
    columns: dict[int, list[GraphNode]] = {}
    for node in _ordered(graph):
        columns.setdefault(node.layer, []).append(node)
    step_x, step_y = SVG_BOX_WIDTH + SVG_COLUMN_GAP, SVG_BOX_HEIGHT + SVG_ROW_GAP
    position = {
        node.key: (SVG_MARGIN + layer * step_x, SVG_MARGIN + row * step_y)
        for layer, nodes in columns.items()
        for row, node in enumerate(nodes)
    }
    width = SVG_MARGIN * 2 + (max(columns, default=0) + 1) * step_x - SVG_COLUMN_GAP
    height = SVG_MARGIN * 2 + max((len(nodes) for nodes in columns.values()), default=0) * step_y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#666"/></marker></defs>',
    ]
    for source, target in graph.edges:
        (x1, y1), (x2, y2) = position[source], position[target]
        start, end = (x1 + SVG_BOX_WIDTH, y1 + SVG_BOX_HEIGHT / 2), (x2, y2 + SVG_BOX_HEIGHT / 2)
        middle = (start[0] + end[0]) / 2
        parts.append(
            f'<path d="M{start[0]},{start[1]} C{middle},{start[1]} {middle},{end[1]} {end[0]},{end[1]}" '
            'fill="none" stroke="#999" marker-end="url(#arrow)"/>'
        )
    for node in _ordered(graph):
        x, y = position[node.key]
        style = (
            'rx="16" fill="#eef6e8" stroke="#6a9a4a"'
            if node.is_input
            else 'rx="3" fill="#e8eef8" stroke="#4a6a9a"'
        )
        parts.append(
            f'<g class="{"input" if node.is_input else "artifact"}"><title>{html.escape(node.key)}</title>'
        )
        parts.append(f'<rect x="{x}" y="{y}" width="{SVG_BOX_WIDTH}" height="{SVG_BOX_HEIGHT}" {style}/>')
        for offset, (value, weight) in enumerate(((node.label, "bold"), (node.detail, "normal"))):
            parts.append(
                f'<text x="{x + 8}" y="{y + 15 + offset * 14}" font-weight="{weight}">'
                f"{html.escape(_shorten(value))}</text>"
            )
        parts.append("</g>")
    return "\n".join([*parts, "</svg>"]) + "\n"


def _shorten(text: str) -> str:
    """Long labels (paths) keep their end, which names the file."""
    return text if len(text) <= SVG_LABEL_CHARS else "..." + text[-(SVG_LABEL_CHARS - 3) :]
