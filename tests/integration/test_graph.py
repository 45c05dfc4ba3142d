"""`kube-netlab graph` on a running two-node lab, every format rendered for
real: the SVG parses and names every pod, the PNG decodes to a drawing, the dot
text goes through Graphviz without a warning, the Mermaid text has every node,
and the HTML page, opened in headless Chromium, paints a picture and runs its
script over the inline SVG."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest

from labrun import Lab, items, kn, lab_leftovers
from netlab.debug import graph

SVG_NS = "{http://www.w3.org/2000/svg}"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        lab.up()
        lab.pods = items(lab.name, "pods")
        lab.services = items(lab.name, "services")
        yield lab
    finally:
        lab.down()
    assert lab_leftovers(lab.name) == []


def draw(lab, fmt: str, *args: str) -> str:
    return kn("graph", "-o", fmt, *args, "--lab", lab.name).stdout


def names_drawn(lab) -> list[str]:
    """What every picture must name: each pod, node, Service, and the VXLAN facts."""
    pods = [p["metadata"]["name"] for p in lab.pods]
    services = [s["metadata"]["name"] for s in lab.services]
    assert len(pods) >= 5 and "kubernetes" in services  # four echo replicas and coredns, at least
    return [*pods, *services, "node-a", "node-b", "flannel.1", "VNI 1", "192.168.56.11", "192.168.56.12",
            "192.168.56.254", "cni0"]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """A PNG's size and rows of pixels (8-bit RGB or RGBA, not interlaced): enough to tell a
    drawing from a blank page, with nothing but zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(b"".join(bytes(line[j:j + 3]) for j in range(0, stride, bpp)))   # RGB, alpha dropped
        prev = line
    return width, height, rows


def colours(rows: list[bytes]) -> tuple[int, set]:
    """How many pixels are not white, and the distinct colours (every 4th pixel sampled)."""
    inked, seen = 0, set()
    for row in rows:
        for j in range(0, len(row), 3):
            px = row[j:j + 3]
            if px != b"\xff\xff\xff":
                inked += 1
                if j % 12 == 0:
                    seen.add(px)
    return inked, seen


def test_svg_parses_and_names_every_pod_node_service_and_tunnel(lab):
    svg = ET.fromstring(draw(lab, "svg"))
    assert svg.tag == f"{SVG_NS}svg"
    text = "\n".join("".join(t.itertext()) for t in svg.iter(f"{SVG_NS}text"))
    for name in names_drawn(lab):
        assert name in text, name
    # every pod is an SVG element with its graph id, which trace --svg and the html page look up
    ids = {g.get("id") for g in svg.iter(f"{SVG_NS}g")}
    for p in lab.pods:
        assert f"pod/{p['metadata']['namespace']}/{p['metadata']['name']}" in ids
    assert "tunnel/node-a/node-b" in ids


def test_png_written_to_a_file_is_a_drawing(lab, tmp_path):
    out = tmp_path / "lab.png"
    proc = kn("graph", "-f", str(out), "--lab", lab.name)   # the format from the file name
    assert "(png)" in proc.stderr and proc.stdout == ""
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    width, height, rows = png_pixels(data)
    assert width > 800 and height > 300
    inked, seen = colours(rows)
    assert inked > width * height // 20 and len(seen) > 20   # boxes, fills and text, not a blank


def test_png_to_stdout_is_refused_with_the_fix(lab):
    proc = kn("graph", "-o", "png", "--lab", lab.name, check=False)
    assert proc.returncode == 1 and "-f FILE.png" in proc.stderr and proc.stdout == ""


def test_dot_text_goes_through_graphviz_cleanly(lab):
    text = draw(lab, "dot")
    proc = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    ET.fromstring(proc.stdout)
    for name in names_drawn(lab):
        assert name in text, name


def test_mermaid_has_every_node(lab):
    text = draw(lab, "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert sum(line.strip().startswith("subgraph ") for line in lines) == sum(line.strip() == "end" for line in lines)
    for name in names_drawn(lab):
        assert name in text, name
    pods_drawn = [line for line in lines if re.match(r"\s+n\d+\[", line) and "eth0 10.244." in line]
    assert len(pods_drawn) == len(lab.pods)


def test_interface_names_drawn_are_the_kernels(lab):
    """The graph computes host veth names from the records; the nodes hold exactly those veths."""
    g = graph.lab_graph(lab.name)
    for node in ("node-a", "node-b"):
        netns = f"{lab.name}-{node}"
        links = json.loads(subprocess.run(["ip", "-j", "-n", netns, "link", "show"], capture_output=True,
                                          text=True, check=True).stdout)
        kernel = {link["ifname"] for link in links if link["ifname"].startswith("veth")}
        drawn = {e.label for e in g.edges if e.kind == "veth" and e.dst == f"if/{netns}/cni0"}
        assert kernel == drawn and kernel
        for link in links:
            if link["ifname"] in ("eth0", "cni0", "flannel.1") or link["ifname"].startswith("veth"):
                assert graph.element_for_hop(g, netns, link["ifname"]), link["ifname"]


def test_html_page_renders_in_headless_chromium(lab, tmp_path):
    page = tmp_path / "lab.html"
    kn("graph", "-o", "html", "-f", str(page), "--lab", lab.name)
    html_text = page.read_text()
    assert "<svg" in html_text and "http-equiv=\"Content-Security-Policy\"" in html_text
    url = f"file://{page}"
    shot = tmp_path / "shot.png"
    base = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,900", url],
                   capture_output=True, timeout=120, check=True)
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    inked, seen = colours(rows)
    assert inked > 1200 * 900 // 50 and len(seen) > 20   # the drawing and its colours, not a blank page
    # the palette's fills made it to the screen: the pods' blue and the VTEPs' red among the colours
    assert any(abs(px[0] - 0xe3) < 6 and abs(px[1] - 0xf0) < 6 and abs(px[2] - 0xff) < 6 for px in seen)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<svg" in dom
    # the script ran and found the graph's elements in the DOM: every node, edge and cluster
    interactive = int(re.search(r'data-interactive="(\d+)"', dom)[1])
    assert interactive == len(graph.lab_graph(lab.name).ids())
    for p in lab.pods:
        assert f'id="pod/{p["metadata"]["namespace"]}/{p["metadata"]["name"]}"' in dom
