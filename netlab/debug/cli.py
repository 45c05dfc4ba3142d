"""The debugging commands of kube-netlab (capture, trace, explain, logs, graph)."""
from __future__ import annotations


def register(sub, lab_opt) -> None:
    """Add this group's subcommands to kube-netlab's parser (sub: argparse subparsers;
    lab_opt(sp) adds --lab). Each subcommand's func takes the parsed args, returns the exit code."""
    _register_graph(sub, lab_opt)
    _register_explain_logs(sub, lab_opt)
    _register_capture_trace(sub, lab_opt)


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


def _register_capture_trace(sub, lab_opt) -> None:
    # the command modules import scapy; only when one of these commands runs
    def capture(a):
        from .capture import cmd_capture
        return cmd_capture(a)

    def trace(a):
        from .trace import cmd_trace
        return cmd_trace(a)

    sp = sub.add_parser("capture", help="sniff packets on pods, nodes, the underlay or the external host",
                        description="TARGET: POD (with -n NS) or NS/POD, node/NAME, underlay, external. "
                                    "Several targets merge into one time-ordered pcapng, each packet's hop named.")
    sp.add_argument("targets", nargs="+", metavar="TARGET")
    sp.add_argument("-n", "--namespace", help="the pod's namespace (default: default)")
    sp.add_argument("-i", "--interface", help="interface (a pod: eth0; a node: eth0, cni0, flannel.1 or any)")
    sp.add_argument("--filter", help="a tcpdump filter expression, e.g. 'udp port 8472'")
    sp.add_argument("-c", "--count", type=int, help="stop after N packets")
    sp.add_argument("--timeout", type=float, help="stop after S seconds")
    sp.add_argument("-w", "--write", metavar="FILE", help="write the packets to a pcapng file")
    lab_opt(sp)
    sp.set_defaults(func=capture)

    sp = sub.add_parser("trace", help="send one marked probe and show its path and the reply's, hop by hop",
                        description="SRC: POD, NS/POD, node/NAME or external. DST: a pod, svc/NAME (or its DNS "
                                    "name), IP[:PORT], or node/NAME:PORT (a NodePort).")
    sp.add_argument("src", metavar="SRC")
    sp.add_argument("dst", metavar="DST")
    sp.add_argument("-n", "--namespace", help="namespace of pods and Services named without one")
    sp.add_argument("--port", type=int, help="destination port (default: the Service's or pod's first port)")
    sp.add_argument("--proto", default="tcp", choices=["tcp", "udp", "icmp"])
    sp.add_argument("--size", type=int, help="the probe's IP length in bytes (padding), to test MTUs")
    sp.add_argument("--no-df", action="store_true", help="let the probe be fragmented (DF is set by default)")
    sp.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the reply (default 1)")
    sp.add_argument("-o", "--output", default="table", choices=["table", "json"])
    sp.add_argument("-w", "--write", metavar="FILE.pcap", help="the probe's and reply's packets as pcapng")
    sp.add_argument("--svg", metavar="FILE", help="draw the traced path as SVG")
    lab_opt(sp)
    sp.set_defaults(func=trace)
