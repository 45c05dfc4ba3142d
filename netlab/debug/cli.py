"""The debugging commands of kube-netlab (capture, trace, explain, logs, graph)."""
from __future__ import annotations


def register(sub, lab_opt) -> None:
    """Add this group's subcommands to kube-netlab's parser (sub: argparse subparsers;
    lab_opt(sp) adds --lab). Each subcommand's func takes the parsed args, returns the exit code."""
    _register_graph(sub, lab_opt)
    _register_explain_logs(sub, lab_opt)


def _register_explain_logs(sub, lab_opt) -> None:
    from . import explain, logs
    explain.add_parser(sub, lab_opt)
    logs.add_parser(sub, lab_opt)


def _register_graph(sub, lab_opt) -> None:
    from .graph import FORMATS
    sp = sub.add_parser("graph", help="draw the lab: nodes, pods, bridges, VXLAN tunnels, Services",
                        description="A picture of the lab from its records: svg, png (needs -f), dot, mermaid, "
                                    "or html (one self-contained page with details on hover).")
    sp.add_argument("-o", "--output", choices=FORMATS,
                    help="format (default: from -f's extension, else svg)")
    sp.add_argument("-f", "--file", help="write here instead of stdout")
    lab_opt(sp)
    sp.set_defaults(func=_cmd_graph)


def _cmd_graph(a) -> int:
    import sys

    from ..engine import LabError, resolve_lab
    from .graph import GraphError, format_for, lab_graph, render
    fmt = format_for(a.file, a.output)
    if fmt == "png" and not a.file:
        raise LabError("png is binary: write it to a file with -f FILE.png (or use -o svg)")
    try:
        out = render(lab_graph(resolve_lab(a.lab)), fmt)
    except GraphError as e:
        raise LabError(str(e)) from None
    if a.file:
        with open(a.file, "wb") as f:
            f.write(out if isinstance(out, bytes) else out.encode())
        print(f"graph written to {a.file} ({fmt})", file=sys.stderr)
    else:
        sys.stdout.write(out)
    return 0
