"""LabGraph + its SVG -> one self-contained HTML page a student opens in a
browser: the SVG inline, a legend, the traced path when there is one, and a
panel showing the details of whatever the pointer is over. No external
resources (a Content-Security-Policy says so to the browser as well)."""
from __future__ import annotations

import html
import json

from .graph import PALETTE, PATH_COLOUR, LabGraph

KIND_NAMES = {"pod": "pod (its netns, eth0)", "bridge": "cni0 bridge", "vxlan": "VXLAN device (VTEP)",
              "uplink": "node eth0 (underlay)", "switch": "underlay switch", "host": "external host",
              "service": "Service", "note": "note"}

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fff; }
header { padding: 10px 16px; border-bottom: 1px solid #ddd; }
h1 { font-size: 18px; margin: 0 0 6px 0; }
.legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 12px; border: 1px solid; margin-right: 4px; vertical-align: -2px; }
main { display: flex; align-items: flex-start; }
#graph { flex: 1; overflow: auto; padding: 8px; }
#graph svg { max-width: 100%; height: auto; }
aside { width: 300px; padding: 10px 14px; border-left: 1px solid #ddd; font-size: 13px; position: sticky; top: 0; }
aside h2 { font-size: 14px; margin: 0 0 6px 0; }
aside table { border-collapse: collapse; }
aside td { padding: 2px 6px 2px 0; vertical-align: top; }
aside td:first-child { color: #666; white-space: nowrap; }
ul.path { font-size: 12px; margin: 6px 0 0 0; padding: 0; list-style: none; color: PATH_COLOUR; }
g.hover polygon, g.hover ellipse, g.hover path { stroke-width: 3px; }
g.node, g.edge, g.cluster { cursor: default; }
""".replace("PATH_COLOUR", PATH_COLOUR)

SCRIPT = """
(function () {
  var details = JSON.parse(document.getElementById('details-data').textContent);
  var panel = document.getElementById('details');
  function show(id) {
    var d = details[id];
    panel.textContent = '';
    var h = document.createElement('h2');
    h.textContent = d.title;
    panel.appendChild(h);
    var table = document.createElement('table');
    d.rows.forEach(function (row) {
      var tr = table.insertRow();
      tr.insertCell().textContent = row[0];
      tr.insertCell().textContent = row[1];
    });
    panel.appendChild(table);
  }
  var count = 0;
  document.querySelectorAll('#graph g[id]').forEach(function (g) {
    if (!details.hasOwnProperty(g.id)) { return; }
    count += 1;
    g.addEventListener('mouseenter', function (ev) { ev.stopPropagation(); show(g.id); g.classList.add('hover'); });
    g.addEventListener('mouseleave', function () { g.classList.remove('hover'); });
  });
  document.body.setAttribute('data-interactive', String(count));
})();
"""


def _entry(title: str, kind: str, details) -> dict:
    return {"title": title, "rows": [["kind", kind], *[[k, v] for k, v in details]]}


def details_map(graph: LabGraph) -> dict:
    """What the page shows for each SVG element id."""
    out = {}
    for c in graph.clusters:
        out[c.id] = _entry(c.label.split("\n")[0], c.kind, c.details)
    for n in graph.nodes:
        steps = (("path steps", ", ".join(map(str, n.steps))),) if n.steps else ()
        out[n.id] = _entry(n.label.replace("\n", " "), KIND_NAMES.get(n.kind, n.kind), (*n.details, *steps))
    for e in graph.edges:
        steps = (("path steps", ", ".join(map(str, e.steps))),) if e.steps else ()
        out[e.id] = _entry(e.label.replace("\n", " ") or e.kind, e.kind, (*e.details, *steps))
    return out


def _inline(svg: str) -> str:
    """Graphviz's SVG without its XML prolog and DOCTYPE, which do not belong inside HTML."""
    return svg[svg.index("<svg"):]


def render(graph: LabGraph, svg: str) -> str:
    title = html.escape(graph.title)
    legend = "".join(f'<span><i style="background:{fill};border-color:{stroke}"></i>{html.escape(KIND_NAMES[k])}</span>'
                     for k, (fill, stroke) in PALETTE.items() if k != "note")
    path = ""
    if graph.path:
        path = '<ul class="path">' + "".join(f"<li>{html.escape(line)}</li>" for line in graph.path) + "</ul>"
    data = json.dumps(details_map(graph), sort_keys=True).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>kube-netlab: {title}</h1><div class="legend">{legend}</div>{path}</header>
<main>
<div id="graph">
{_inline(svg)}
</div>
<aside id="details"><h2>Details</h2><p>Point at a pod, an interface, a tunnel or a Service to see what it is.</p></aside>
</main>
<script type="application/json" id="details-data">{data}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""
