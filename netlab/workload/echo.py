"""The built-in container: an echo server on each containerPort, TCP and UDP.

It answers with the pod's name and the client's IP:port, which makes load
balancing, session affinity and masquerading visible (like agnhost netexec):

    $ kube-netlab exec client -- curl -s http://10.244.2.3:8080/
    echo-7d4b9c-x2x9z 10.244.1.4:51234

TCP: an HTTP request gets an HTTP 200 with that line as body; anything else
(or silence for 100 ms, e.g. `nc`) gets the bare line. UDP: every datagram
gets the line back. Standard library only; one process per pod, forked by the node's shim
(netlab/shim.py) or run as `python -m netlab.workload.echo` (the external host).
"""
from __future__ import annotations

import argparse
import select
import signal
import socketserver
import sys
import threading

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def answer(pod: str, client: tuple) -> bytes:
    return f"{pod} {client[0]}:{client[1]}\n".encode()


class TCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        line = answer(self.server.pod, self.client_address)
        ready, _, _ = select.select([self.request], [], [], 0.1)
        data = self.request.recv(4096) if ready else b""
        if data.startswith(HTTP_METHODS):
            body = b"" if data.startswith(b"HEAD ") else line
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                                 + f"Content-Length: {len(line)}\r\n\r\n".encode() + body)
        else:
            self.request.sendall(line)


class UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        _, sock = self.request
        sock.sendto(answer(self.server.pod, self.client_address), self.client_address)


class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class UDPServer(socketserver.UDPServer):
    allow_reuse_address = True


def serve(pod: str, tcp_ports: list[int], udp_ports: list[int]) -> list[socketserver.BaseServer]:
    servers = []
    for port in tcp_ports:
        servers.append(TCPServer(("0.0.0.0", port), TCPHandler))
    for port in udp_ports:
        servers.append(UDPServer(("0.0.0.0", port), UDPHandler))
    for srv in servers:
        srv.pod = pod
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return servers


def run(pod: str, tcp: list[int], udp: list[int], on_ready=None) -> int:
    """Serve until SIGTERM/SIGINT; the node's shim calls this in a forked child (no exec),
    with on_ready called once the ports listen."""
    if not tcp and not udp:
        tcp = [8080]
    serve(pod, tcp, udp)
    if on_ready is not None:
        on_ready()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"echo: {pod} listening tcp={tcp} udp={udp}", file=sys.stderr, flush=True)
    stop.wait()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="kube-netlab's built-in echo container")
    p.add_argument("--pod", required=True, help="the pod name to answer with")
    p.add_argument("--tcp", type=int, action="append", default=[], help="a TCP port (repeatable)")
    p.add_argument("--udp", type=int, action="append", default=[], help="a UDP port (repeatable)")
    a = p.parse_args(argv)
    return run(a.pod, a.tcp, a.udp)


if __name__ == "__main__":
    sys.exit(main())
