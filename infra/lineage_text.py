"""Text rendering of an artifact's lineage tree (`lmforge lineage`)."""

from __future__ import annotations

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
