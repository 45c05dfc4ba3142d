"""netlab-dns: the cluster DNS server (the CoreDNS role) and the external host's upstream.

    netlab-dns serve --lab LAB [--store PATH] [--listen 0.0.0.0:53] [--workers N] [--domain D]
                     [--ttl 30] [--upstream IP[:PORT] | --no-upstream] [--metrics-port 9153]
    netlab-dns upstream [--listen 0.0.0.0:53] [--answer NAME=IP ...]

Each worker process binds its own UDP and TCP sockets with SO_REUSEPORT (the
kernel spreads clients over them), watches the store on its own, and runs:
the UDP loop (what is queued taken by one recvmmsg and answered by one
sendmmsg, see batch.py; fast path table, else the full path; forwarded
questions wait in a table of pending upstream IDs, so a slow upstream
blocks nobody), and a thread per TCP connection (length-prefixed messages, several per connection,
idle ones closed). /metrics (Prometheus text, CoreDNS's port 9153) is served
by the parent from counters the workers share.
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import logging
import multiprocessing
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import wire
from .batch import open_batch
from .fastpath import AnswerTable
from .resolver import Forward, Resolver
from .zone import Zone, static_zone

log = logging.getLogger("netlab-dns")

UPSTREAM_TIMEOUT = 2.0
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 128        # per worker; more are closed at once
UDP_BATCH = 64                   # datagrams per recvmmsg/sendmmsg (and per upstream read)
UDP_WAKE_US = 250_000           # the UDP loop's longest wait, to see stop
UDP_ROUNDS = 4                   # batches read per wake-up before the loop looks at stop again
MAX_UDP_QUERY = 4096             # a bigger query is cut (and answered FORMERR): no 64 KiB buffer per datagram
MAX_UDP_REPLY = 4096             # a send slot; a bigger UDP answer goes alone by sendto
PR_SET_PDEATHSIG = 1
# counters each worker adds to (one row per worker), summed for /metrics
COUNTERS = ("udp", "tcp", "fast", "forwarded", "upstream_timeouts", "dropped")


def parse_hostport(text: str, default_port: int = 53, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        ipaddress.IPv4Address(host)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise SystemExit(f"netlab-dns: {flag} {text!r}: use an IPv4 address and an optional port, "
                         f"e.g. 10.96.0.10 or 0.0.0.0:53") from None
    return host, number


def parse_answers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, ip = item.partition("=")
        try:
            ipaddress.ip_address(ip)
            wire.encode_name(name)
        except ValueError:
            raise SystemExit(f"netlab-dns: --answer {item!r}: use NAME=IP, e.g. www.example.org=192.168.56.254") from None
        if not sep or not name:
            raise SystemExit(f"netlab-dns: --answer {item!r}: use NAME=IP, e.g. www.example.org=192.168.56.254")
        out[name] = ip
    return out


class Worker:
    """One process's server: the current table (swapped whole on a zone change), the sockets, the loops."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int] | None, counters=None, slot: int = 0):
        self.listen = listen
        self.upstream = upstream
        self.table = AnswerTable(Resolver(Zone([]), upstream=upstream is not None))
        self.stop = threading.Event()
        self.counters = counters
        self.base = slot * len(COUNTERS)
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP_CONNECTIONS)

    def count(self, what: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters[self.base + COUNTERS.index(what)] += n

    def set_zone(self, zone: Zone, precompute_a: bool = True) -> None:
        resolver = Resolver(zone, upstream=self.upstream is not None)
        names = [n for n, types in zone.records.items() if wire.A in types] if precompute_a else []
        self.table = AnswerTable(resolver, [(n, wire.A) for n in names])

    # -- sockets ---------------------------------------------------------------------------------
    def bind(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (self.udp, self.tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(self.listen)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # blocking, so that recvmmsg waits for the first datagram, but never past SO_RCVTIMEO (stop is seen)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, UDP_WAKE_US))
        self.batch = open_batch(self.udp, UDP_BATCH, MAX_UDP_QUERY, MAX_UDP_REPLY)
        self.tcp.listen(128)
        self.fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fwd.setblocking(False)
        if self.upstream:
            self.fwd.connect(self.upstream)   # connected: only the upstream's replies reach us

    # -- UDP -------------------------------------------------------------------------------------
    def serve_udp(self) -> None:
        """Blocks in recvmmsg (SO_RCVTIMEO wakes it to see stop): no select per batch. Upstream
        replies and their timeouts have a thread of their own."""
        pending: dict[int, tuple[Forward, tuple, float]] = {}
        threading.Thread(target=self.serve_upstream, args=(pending,), name="upstream", daemon=True).start()
        while not self.stop.is_set():
            self.answer_queued(pending)

    def serve_upstream(self, pending: dict) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.fwd, selectors.EVENT_READ)
        while not self.stop.is_set():
            if sel.select(0.25):
                self._drain_upstream(pending)
            if pending:
                now = time.monotonic()
                # list() copies at once (the UDP thread adds entries meanwhile)
                for rid, (_f, _a, deadline) in list(pending.items()):
                    entry = pending.pop(rid, None) if deadline < now else None
                    if entry is not None:
                        self.count("upstream_timeouts")
                        self._send(self.udp, self.table.resolver.servfail(entry[0]), entry[1])

    def _send(self, sock, data: bytes, addr) -> None:
        try:
            sock.sendto(data, socket.MSG_DONTWAIT, addr)
        except OSError:
            pass   # an unreachable or closed client is its problem, not the loop's

    def answer_queued(self, pending: dict) -> None:
        """What is queued, a batch (one recvmmsg, one sendmmsg) at a time, up to UDP_ROUNDS batches a
        wake-up: the batch answers what the fast path table holds, the rest takes the full path."""
        udp, batch = self.udp, self.batch
        table = self.table
        replied = full = received = 0   # full: replies of the full path among those batched
        for round_ in range(UDP_ROUNDS):
            try:
                n = batch.recv(wait=not round_)
            except OSError:
                continue   # a socket error (e.g. ENOMEM) is the kernel's; the next datagram is ours
            received += n
            k, rest = batch.answer_fast(table)    # k: send slots filled
            for i in rest:
                data = batch.datagram(i)
                out = table.resolver.handle(data)
                if isinstance(out, Forward):
                    self._forward_udp(out, batch.address(i), pending)
                elif out is not None:
                    table.remember(data, out)
                    if batch.reply(k, i, out):
                        k += 1
                        full += 1
                    else:   # bigger than a send slot (a client's EDNS buffer over MAX_UDP_REPLY)
                        self._send(udp, out, batch.address(i))
                else:
                    self.count("dropped")
            replied += k
            if k:
                batch.send(k)
            if n < batch.size:
                break
        if self.counters is not None:
            self.counters[self.base] += received
            self.counters[self.base + 2] += replied - full

    def _forward_udp(self, fwd: Forward, addr, pending) -> None:
        rid = random.getrandbits(16)
        while rid in pending:
            rid = random.getrandbits(16)
        pending[rid] = (fwd, addr, time.monotonic() + UPSTREAM_TIMEOUT)   # before the reply can come
        try:
            self.fwd.send(rid.to_bytes(2, "big") + fwd.packet[2:])
        except OSError:
            if pending.pop(rid, None) is not None:
                self._send(self.udp, self.table.resolver.servfail(fwd), addr)
            return
        self.count("forwarded")

    def _drain_upstream(self, pending) -> None:
        for _ in range(UDP_BATCH):
            try:
                reply = self.fwd.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:   # ICMP port unreachable from the upstream: the timeout answers
                continue
            if len(reply) < 12:
                continue
            rid = int.from_bytes(reply[:2], "big")
            entry = pending.get(rid)
            if entry is None:
                continue
            fwd, addr, _ = entry
            out = self.table.resolver.relay(fwd, reply)
            if out is not None and pending.pop(rid, None) is not None:
                self._send(self.udp, out, addr)

    # -- TCP -------------------------------------------------------------------------------------
    def serve_tcp(self) -> None:
        self.tcp.settimeout(0.5)
        while not self.stop.is_set():
            try:
                conn, _addr = self.tcp.accept()
            except (socket.timeout, InterruptedError):
                continue
            except OSError:
                if self.stop.is_set():
                    return
                continue
            if not self.tcp_slots.acquire(blocking=False):
                conn.close()   # full: a flood of idle connections must not take every thread
                continue
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TCP_IDLE_TIMEOUT)
            while not self.stop.is_set():
                head = _recv_exactly(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                if length < 12:
                    return   # zero-length or header-less message: nothing to answer, close like BIND
                data = _recv_exactly(conn, length)
                if data is None:
                    return
                self.count("tcp")
                table = self.table
                out = table.resolver.handle(data, tcp=True)
                if isinstance(out, Forward):
                    self.count("forwarded")
                    out = self._forward_tcp(out, table.resolver)
                if out is None:
                    self.count("dropped")
                    continue
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            pass
        finally:
            conn.close()
            self.tcp_slots.release()

    def _forward_tcp(self, fwd: Forward, resolver: Resolver) -> bytes:
        try:
            with socket.create_connection(self.upstream, timeout=UPSTREAM_TIMEOUT) as up:
                up.sendall(struct.pack("!H", len(fwd.packet)) + fwd.packet)
                head = _recv_exactly(up, 2)
                reply = head and _recv_exactly(up, struct.unpack("!H", head)[0])
        except OSError:
            reply = None
        out = resolver.relay(fwd, reply, tcp=True) if reply else None
        if out is None:
            self.count("upstream_timeouts")
            return resolver.servfail(fwd)
        return out

    # -- life --------------------------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self.serve_tcp, name="tcp", daemon=True).start()
        self.serve_udp()


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --- processes ------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_main(make_worker, slot: int, counters) -> None:
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    worker = make_worker(counters, slot)
    worker.run()


def serve_metrics(port: int, counters, workers: int) -> ThreadingHTTPServer:
    """Prometheus text on /metrics, named after CoreDNS's where one fits."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            sums = {c: sum(counters[w * len(COUNTERS) + i] for w in range(workers)) for i, c in enumerate(COUNTERS)}
            body = "".join([
                "# TYPE coredns_dns_requests_total counter\n",
                f'coredns_dns_requests_total{{proto="udp"}} {sums["udp"]}\n',
                f'coredns_dns_requests_total{{proto="tcp"}} {sums["tcp"]}\n',
                "# TYPE netlab_dns_fast_path_responses_total counter\n",
                f"netlab_dns_fast_path_responses_total {sums['fast']}\n",
                "# TYPE coredns_forward_requests_total counter\n",
                f"coredns_forward_requests_total {sums['forwarded']}\n",
                "# TYPE netlab_dns_upstream_timeouts_total counter\n",
                f"netlab_dns_upstream_timeouts_total {sums['upstream_timeouts']}\n",
                "# TYPE netlab_dns_dropped_total counter\n",
                f"netlab_dns_dropped_total {sums['dropped']}\n",
            ]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    httpd = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def run_workers(make_worker, workers: int, metrics_port: int | None = None) -> int:
    """Forks the workers, and stays to supervise them (and serve /metrics) until signalled."""
    ctx = multiprocessing.get_context("fork")
    counters = ctx.RawArray(ctypes.c_uint64, workers * len(COUNTERS))
    procs = [ctx.Process(target=_worker_main, args=(make_worker, i, counters), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    if metrics_port:
        serve_metrics(metrics_port, counters, workers)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    code = 0
    while not stopping.wait(0.5):
        if any(not p.is_alive() for p in procs):
            log.error("a worker exited; stopping")
            code = 1
            break
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
    return code


def _check_bind(listen: tuple[str, int]) -> None:
    """Fail early, in the parent, with a readable message (the address is taken, or not ours)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind(listen)
            except OSError as e:
                raise SystemExit(f"netlab-dns: cannot listen on {listen[0]}:{listen[1]}: {e.strerror}; "
                                 f"choose another --listen") from None


def cmd_serve(args) -> int:
    from netlab.state import LabPaths, LabState
    from netlab.store import open_store
    from .watch import StoreWatcher, lab_settings

    store_path = args.store or LabPaths(args.lab).store
    if not os.path.exists(store_path):
        raise SystemExit(f"netlab-dns: --store {store_path}: no such store; is lab {args.lab!r} up? "
                         f"(give --store PATH for another file)")
    with open_store(store_path) as store:
        settings = lab_settings(LabState(store).lab())
    changes = {}
    if args.domain:
        changes["domain"] = args.domain.strip(".")
    if args.ttl is not None:
        if not 0 <= args.ttl <= 3600:
            raise SystemExit(f"netlab-dns: --ttl {args.ttl}: use 0 to 3600 seconds (CoreDNS's range)")
        changes["ttl"] = args.ttl
    if args.no_upstream:
        changes["upstream"] = None
    elif args.upstream:
        changes["upstream"] = args.upstream
    settings = settings.__class__(**{**settings.__dict__, **changes})
    upstream = parse_hostport(settings.upstream, 53, "--upstream") if settings.upstream else None
    listen = parse_hostport(args.listen)
    if args.workers < 1:
        raise SystemExit(f"netlab-dns: --workers {args.workers}: use 1 or more")
    _check_bind(listen)

    def make_worker(counters, slot):
        worker = Worker(listen, upstream, counters, slot)
        # the zone first: once bound, SO_REUSEPORT sends this worker its share of the queries
        StoreWatcher(store_path, settings, worker.set_zone).start(worker.stop)
        worker.bind()
        return worker

    log.info("serving %s on %s:%d, upstream %s", settings.domain, *listen, settings.upstream or "none")
    return run_workers(make_worker, args.workers, args.metrics_port)


def cmd_upstream(args) -> int:
    listen = parse_hostport(args.listen)
    zone = static_zone(parse_answers(args.answer or []))
    _check_bind(listen)

    def make_worker(counters, slot):
        worker = Worker(listen, None, counters, slot)
        worker.set_zone(zone)
        worker.bind()
        return worker

    return run_workers(make_worker, args.workers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="netlab-dns", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the cluster DNS: Services and endpoints from the lab's store")
    s.add_argument("--lab", required=True)
    s.add_argument("--store", help="the store file (default: the lab's /run/netlab/<lab>/state.db)")
    s.add_argument("--listen", default="0.0.0.0:53")
    s.add_argument("--workers", type=int, default=2, help="SO_REUSEPORT worker processes (default 2)")
    s.add_argument("--domain", help="cluster domain (default: the lab's, cluster.local)")
    s.add_argument("--ttl", type=int, help="record TTL in seconds (default: the lab's, 30)")
    up = s.add_mutually_exclusive_group()
    up.add_argument("--upstream", help="IP[:PORT] for names outside the cluster (default: the lab's external host)")
    up.add_argument("--no-upstream", action="store_true", help="answer REFUSED for names outside the cluster")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (CoreDNS: 9153)")
    s.set_defaults(run=cmd_serve)
    u = sub.add_parser("upstream", help="the outside world, as the lab's external host plays it")
    u.add_argument("--listen", default="0.0.0.0:53")
    u.add_argument("--answer", action="append", metavar="NAME=IP", help="answer NAME with IP (repeatable)")
    u.add_argument("--workers", type=int, default=1)
    u.set_defaults(run=cmd_upstream)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="netlab-dns: %(message)s", stream=sys.stderr)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
