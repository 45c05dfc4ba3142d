"""LabGraph -> Mermaid text (`flowchart LR`), for Markdown that GitHub, GitLab
and most wikis draw. Mermaid ids are plain words, so elements are numbered
(n0, n1, c0...). Comments stay on lines of their own, as Mermaid asks."""
from __future__ import annotations

from .graph import BROKEN_COLOUR, CLUSTER_COLOURS, PALETTE, PATH_COLOUR, LabGraph


def label(text: str) -> str:
    """A quoted Mermaid label: quotes as entities, lines as <br/>."""
    return '"' + str(text).replace('"', "#quot;").replace("\n", "<br/>") + '"'


def _with_steps(text: str, steps) -> str:
    return f"[{','.join(map(str, steps))}] {text}" if steps else text


def render(graph: LabGraph) -> str:
    node_ids = {n.id: f"n{i}" for i, n in enumerate(graph.nodes)}
    cluster_ids = {c.id: f"c{i}" for i, c in enumerate(graph.clusters)}
    out = ["flowchart LR", f"  %% {graph.title}"]
    for event, item, depth in graph.nested():
        pad = "  " * depth
        if event == "open":
            out.append(f"{pad}subgraph {cluster_ids[item.id]}[{label(item.label)}]")
        elif event == "node":
            out.append(f"{pad}{node_ids[item.id]}[{label(_with_steps(item.label, item.steps))}]")
        else:
            out.append(f"{pad}end")
    path_links, broken_links = [], []
    for i, e in enumerate(graph.edges):
        arrow = "-.->" if e.kind == "endpoint" else ("-.-" if e.kind in ("tunnel", "encap", "route", "note") else "---")
        text = _with_steps(e.label, e.steps)
        link = f"{arrow}|{label(text)}|" if text else arrow
        out.append(f"  {node_ids[e.src]} {link} {node_ids[e.dst]}")
        if e.on_path:
            path_links.append(i)
        elif e.broken:
            broken_links.append(i)
    for kind, (fill, stroke) in PALETTE.items():
        out.append(f"  classDef {kind} fill:{fill},stroke:{stroke},color:#222")
    out.append(f"  classDef onpath stroke:{PATH_COLOUR},stroke-width:3px,color:{PATH_COLOUR}")
    by_kind: dict[str, list[str]] = {}
    for n in graph.nodes:
        by_kind.setdefault(n.kind, []).append(node_ids[n.id])
    for kind, ids in by_kind.items():
        out.append(f"  class {','.join(ids)} {kind}")
    marked = [node_ids[n.id] for n in graph.nodes if n.steps]
    if marked:
        out.append(f"  class {','.join(marked)} onpath")
    for c in graph.clusters:
        out.append(f"  style {cluster_ids[c.id]} fill:{CLUSTER_COLOURS.get(c.kind, '#ffffff')},stroke:#9e9e9e")
    if path_links:
        out.append(f"  linkStyle {','.join(map(str, path_links))} stroke:{PATH_COLOUR},stroke-width:3px")
    if broken_links:
        out.append(f"  linkStyle {','.join(map(str, broken_links))} stroke:{BROKEN_COLOUR}")
    return "\n".join(out) + "\n"
