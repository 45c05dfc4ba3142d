"""LabGraph -> Graphviz dot text (svg and png are `dot -Tsvg/-Tpng` of it).

Every node, edge and cluster carries its LabGraph id as the SVG element id
(Graphviz's `id` attribute), and its details as the tooltip, so the html page
can find them and a student hovering an SVG sees them."""
from __future__ import annotations

from .graph import BROKEN_COLOUR, CLUSTER_COLOURS, MUTED_COLOUR, PALETTE, PATH_COLOUR, LabGraph

SHAPES = {"pod": "box", "bridge": "box", "vxlan": "hexagon", "uplink": "box", "switch": "box3d",
          "host": "box", "service": "ellipse", "note": "note"}
ROUNDED = {"pod", "host"}
EDGE_STYLES = {   # kind: (style, colour, arrowhead)
    "veth": ("solid", "#2f6db5", "none"), "route": ("dotted", MUTED_COLOUR, "none"),
    "encap": ("dashed", "#b43c3c", "none"), "tunnel": ("dashed", "#b43c3c", "none"),
    "wire": ("bold", "#555555", "none"), "endpoint": ("dashed", "#00796b", "normal"),
    "note": ("dotted", "#c9a400", "none"),
}
FONT = "Helvetica"


def quote(text: str) -> str:
    """A dot string: backslashes and quotes escaped, newlines as dot's centred line breaks."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs) -> str:
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in attrs.items() if v is not None) + "]"


def _tooltip(details) -> str | None:
    return "\n".join(f"{k}: {v}" for k, v in details) or None


def _steps(label: str, steps) -> str:
    return f"[{','.join(map(str, steps))}] {label}" if steps else label


def _node_line(n) -> str:
    fill, stroke = PALETTE.get(n.kind, ("#ffffff", "#333333"))
    style = "filled,rounded" if n.kind in ROUNDED else "filled"
    attrs = dict(id=n.id, label=_steps(n.label, n.steps), shape=SHAPES.get(n.kind, "box"), style=style,
                 fillcolor=fill, color=stroke, tooltip=_tooltip(n.details))
    if n.steps:
        attrs.update(color=PATH_COLOUR, penwidth="3", fontcolor=PATH_COLOUR)
    return f"{quote(n.id)} {_attrs(**attrs)};"


def _edge_line(e) -> str:
    style, colour, arrow = EDGE_STYLES.get(e.kind, ("solid", "#333333", "none"))
    attrs = dict(id=e.id, label=_steps(e.label, e.steps) or None, style=style, color=colour, fontcolor=colour,
                 arrowhead=arrow, tooltip=_tooltip(e.details),
                 constraint=None if e.constraint else "false")
    if e.kind == "tunnel":
        # an xlabel is placed after layout, clear of nodes: the tunnel's label otherwise lands
        # on the cluster border between the two nodes
        attrs.update(penwidth="2", xlabel=attrs.pop("label"))
    if e.broken:
        attrs.update(color=BROKEN_COLOUR if e.kind == "tunnel" else MUTED_COLOUR, fontcolor=BROKEN_COLOUR)
    if e.on_path:
        attrs.update(color=PATH_COLOUR, fontcolor=PATH_COLOUR, penwidth="3", style="bold" if style != "dashed" else style)
    return f"{quote(e.src)} -> {quote(e.dst)} {_attrs(**attrs)};"


def render(graph: LabGraph) -> str:
    out = ["digraph lab {",
           "  " + "graph " + _attrs(rankdir="LR", newrank="true", nodesep="0.25", ranksep="0.5", fontname=FONT,
                                    fontsize="14", label=graph.title, labelloc="t", tooltip=graph.title) + ";",
           "  node " + _attrs(fontname=FONT, fontsize="10", margin="0.12,0.05") + ";",
           "  edge " + _attrs(fontname=FONT, fontsize="9") + ";"]
    for event, item, depth in graph.nested():
        pad = "  " * depth
        if event == "open":
            out.append(f"{pad}subgraph {quote('cluster_' + item.id)} {{")
            out.append(f"{pad}  graph " + _attrs(id=item.id, label=item.label, style="rounded,filled",
                                                  fillcolor=CLUSTER_COLOURS.get(item.kind, "#ffffff"),
                                                  color="#9e9e9e", fontsize="11", labeljust="l",
                                                  tooltip=_tooltip(item.details)) + ";")
        elif event == "node":
            out.append(f"{pad}{_node_line(item)}")
        else:
            out.append(f"{pad}}}")
    for e in graph.edges:
        out.append(f"  {_edge_line(e)}")
    out.append("}")
    return "\n".join(out) + "\n"
