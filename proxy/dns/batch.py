"""recvmmsg(2) and sendmmsg(2) through ctypes: a batch of UDP datagrams per syscall.

Python's socket module has neither call, so one UdpBatch per socket keeps
preallocated arrays of struct mmsghdr, iovec and sockaddr_in and the buffers
they point at (set up once, reused for every batch). recv() takes what is
queued (MSG_WAITFORONE: on a blocking socket it waits for the first, up to
SO_RCVTIMEO; recv(wait=False) never waits); answer_fast(table) fills send
slots with the fast path table's answers and says which datagrams it has
none for; reply(k, i, payload) fills send slot k with another answer to
received datagram i (its msg_name points at i's source address: no address
is decoded); send(count) hands all filled slots to one sendmmsg and goes on
past a datagram the kernel refuses (the rest still go, as with sendto).
PlainBatch is the same interface on recvfrom/sendto. IPv4 only, like the
server's sockets.
"""
from __future__ import annotations

import ctypes
import errno
import socket

from .fastpath import BARE_OPT_LEN, EDNS_HEADERS, OPT_HEAD, OPT_TAIL, PLAIN_HEADERS, AnswerTable

MSG_WAITFORONE = 0x10000       # linux/socket.h
_NO_WAIT = MSG_WAITFORONE | socket.MSG_DONTWAIT
_SOCKADDR_IN_LEN = 16


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_WORDS_PER_MMSG = _MMSG_SIZE // 4                 # msg_len read through a uint32 view of the array
_MSG_LEN_WORD = _MMsgHdr.msg_len.offset // 4
_IOV_LEN_WORD = _IoVec.iov_len.offset // ctypes.sizeof(ctypes.c_size_t)
_WORDS_PER_IOV = ctypes.sizeof(_IoVec) // ctypes.sizeof(ctypes.c_size_t)
_NAME_WORD = _MsgHdr.msg_name.offset // ctypes.sizeof(ctypes.c_void_p)
_PTRS_PER_MMSG = _MMSG_SIZE // ctypes.sizeof(ctypes.c_void_p)


def _libc_calls():
    """(recvmmsg, sendmmsg) from libc, or None where it has not got them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    return recvmmsg, sendmmsg


_CALLS = _libc_calls()


class BatchUnavailable(OSError):
    """This libc or kernel has no recvmmsg/sendmmsg: use the one-datagram loop."""


class UdpBatch:
    def __init__(self, sock: socket.socket, size: int = 64, recv_size: int = 4096, send_size: int = 4096):
        if _CALLS is None:
            raise BatchUnavailable(errno.ENOSYS, "libc has no recvmmsg/sendmmsg")
        if sock.family != socket.AF_INET or sock.type != socket.SOCK_DGRAM:
            raise ValueError("UdpBatch: sock must be an AF_INET SOCK_DGRAM socket")
        self._recvmmsg, self._sendmmsg = _CALLS
        self.sock, self.fd, self.size = sock, sock.fileno(), size
        self.recv_size, self.send_size = recv_size, send_size
        # every array is a bytearray (Python owns it; memoryview casts give cheap per-slot access)
        self._rx_buf = bytearray(size * recv_size)
        self._tx_buf = bytearray(size * send_size)
        self._names = bytearray(size * _SOCKADDR_IN_LEN)
        self._rx_mm = (_MMsgHdr * size)()
        self._tx_mm = (_MMsgHdr * size)()
        self._rx_iov = (_IoVec * size)()
        self._tx_iov = (_IoVec * size)()
        rx_base = _address_of(self._rx_buf)
        tx_base = _address_of(self._tx_buf)
        self._names_base = _address_of(self._names)
        for i in range(size):
            self._rx_iov[i].iov_base, self._rx_iov[i].iov_len = rx_base + i * recv_size, recv_size
            self._tx_iov[i].iov_base = tx_base + i * send_size
            for mm, iov in ((self._rx_mm[i], self._rx_iov), (self._tx_mm[i], self._tx_iov)):
                mm.msg_hdr.msg_name = self._names_base + i * _SOCKADDR_IN_LEN
                mm.msg_hdr.msg_namelen = _SOCKADDR_IN_LEN
                mm.msg_hdr.msg_iov = ctypes.addressof(iov) + i * ctypes.sizeof(_IoVec)
                mm.msg_hdr.msg_iovlen = 1
        self._rx_words = memoryview(self._rx_mm).cast("B").cast("I")
        self._tx_ptrs = memoryview(self._tx_mm).cast("B").cast("P")
        self._tx_iov_lens = memoryview(self._tx_iov).cast("B").cast("N")
        self._rx = memoryview(self._rx_buf)
        self._tx = memoryview(self._tx_buf)
        self._rx_addr = ctypes.addressof(self._rx_mm)
        self._received = 0
        # per slot, the offsets answer_fast needs (precomputed: no arithmetic per query)
        self._rx_slots = [(i, i * recv_size, i * _WORDS_PER_MMSG + _MSG_LEN_WORD,
                           self._names_base + i * _SOCKADDR_IN_LEN) for i in range(size)]
        self._tx_slots = [(k * send_size, k * _WORDS_PER_IOV + _IOV_LEN_WORD, k * _PTRS_PER_MMSG + _NAME_WORD)
                          for k in range(size)]
        self._tx_addr = ctypes.addressof(self._tx_mm)

    def probe(self) -> None:
        """Raises BatchUnavailable if the kernel lacks recvmmsg (ENOSYS; e.g. a seccomp filter)."""
        if self._recvmmsg(-1, None, 0, 0, None) < 0 and ctypes.get_errno() == errno.ENOSYS:
            raise BatchUnavailable(errno.ENOSYS, "the kernel refuses recvmmsg")

    def recv(self, wait: bool = True) -> int:
        """Datagrams now queued, up to size (0: none). Errors other than 'nothing queued' raise OSError."""
        n = self._recvmmsg(self.fd, self._rx_addr, self.size, MSG_WAITFORONE if wait else _NO_WAIT, None)
        self._received = max(n, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        return n

    def datagram(self, i: int) -> bytes:
        """Received datagram i (cut at recv_size, as recvfrom(recv_size) would)."""
        start = i * self.recv_size
        return bytes(self._rx[start:start + self._rx_words[i * _WORDS_PER_MMSG + _MSG_LEN_WORD]])

    def address(self, i: int) -> tuple[str, int]:
        """Received datagram i's source, as recvfrom gives it."""
        name = self._names[i * _SOCKADDR_IN_LEN:(i + 1) * _SOCKADDR_IN_LEN]
        return socket.inet_ntoa(name[4:8]), int.from_bytes(name[2:4], "big")

    def reply(self, k: int, i: int, payload: bytes) -> bool:
        """Send slot k carries payload to datagram i's source; False (slot untouched) if it does not fit."""
        size = len(payload)
        if size > self.send_size:
            return False
        start = k * self.send_size
        self._tx[start:start + size] = payload
        self._tx_iov_lens[k * _WORDS_PER_IOV + _IOV_LEN_WORD] = size
        self._tx_ptrs[k * _PTRS_PER_MMSG + _NAME_WORD] = self._names_base + i * _SOCKADDR_IN_LEN
        return True

    def answer_fast(self, table: AnswerTable) -> tuple[int, list[int]]:
        """Fills send slots 0..k-1 with the table's answers to this batch's datagrams: (k, the indexes
        of those it has none for). AnswerTable.answer's logic inlined, with datagram() and reply():
        at 100k queries/s every call and attribute lookup shows."""
        plain, edns = table.plain, table.edns
        rx, rx_words, tx, tx_iov_lens, tx_ptrs = self._rx, self._rx_words, self._tx, self._tx_iov_lens, self._tx_ptrs
        tx_slots = self._tx_slots
        k = 0
        rest = []
        for i, start, len_word, name in self._rx_slots[:self._received]:
            data = bytes(rx[start:start + rx_words[len_word]])
            head = data[2:12]
            hit = None
            if head in PLAIN_HEADERS:
                q = data[12:]
                hit = plain.get(q) or plain.get(q[:-4].lower() + q[-4:])
            elif head in EDNS_HEADERS and data[-11:-8] == OPT_HEAD and data[-6:] == OPT_TAIL:
                q = data[12:-BARE_OPT_LEN]
                hit = edns.get(q) or edns.get(q[:-4].lower() + q[-4:])
            if hit is None:
                rest.append(i)
                continue
            out = b"".join((data[:2], hit[0], q, hit[1]))   # at most 512 bytes: remember() keeps no more
            size = len(out)
            start, iov_len_word, name_word = tx_slots[k]
            tx[start:start + size] = out
            tx_iov_lens[iov_len_word] = size
            tx_ptrs[name_word] = name
            k += 1
        return k, rest

    def send(self, count: int) -> int:
        """Sends slots 0..count-1 (replies to datagrams of this batch: recv() reuses the addresses).
        Never waits. A datagram the kernel refuses (full buffer, bad address) is skipped, the rest still go.
        Returns how many went."""
        done = sent = 0
        while done < count:
            n = self._sendmmsg(self.fd, self._tx_addr + done * _MMSG_SIZE, count - done, socket.MSG_DONTWAIT)
            if n <= 0:
                done += 1      # the first of the rest failed: drop it, as sendto's error is ignored
                continue
            done += n
            sent += n
        return sent


class PlainBatch:
    """UdpBatch's interface over recvfrom/sendto, one syscall a datagram: where recvmmsg is missing."""

    def __init__(self, sock: socket.socket, size: int = 64, recv_size: int = 4096, send_size: int = 4096):
        self.sock, self.size, self.recv_size, self.send_size = sock, size, recv_size, send_size
        self._received: list[tuple[bytes, tuple[str, int]]] = []
        self._replies: list[tuple[bytes, tuple[str, int]]] = [(b"", ("", 0))] * size

    def recv(self, wait: bool = True) -> int:
        received = self._received = []
        for i in range(self.size):
            try:   # on a blocking socket only the first may wait, as with MSG_WAITFORONE
                received.append(self.sock.recvfrom(self.recv_size, 0 if wait and not i else socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                if not received:
                    raise
                break
        return len(received)

    def datagram(self, i: int) -> bytes:
        return self._received[i][0]

    def address(self, i: int) -> tuple[str, int]:
        return self._received[i][1]

    def reply(self, k: int, i: int, payload: bytes) -> bool:
        self._replies[k] = (payload, self._received[i][1])
        return True

    def answer_fast(self, table: AnswerTable) -> tuple[int, list[int]]:
        k = 0
        rest = []
        for i, (data, addr) in enumerate(self._received):
            out = table.answer(data)
            if out is None:
                rest.append(i)
            else:
                self._replies[k] = (out, addr)
                k += 1
        return k, rest

    def send(self, count: int) -> int:
        sent = 0
        for payload, addr in self._replies[:count]:
            try:
                self.sock.sendto(payload, socket.MSG_DONTWAIT, addr)
                sent += 1
            except OSError:
                pass
        return sent


def open_batch(sock: socket.socket, size: int = 64, recv_size: int = 4096,
               send_size: int = 4096) -> UdpBatch | PlainBatch:
    """A UdpBatch, or a PlainBatch where this libc or kernel has no recvmmsg/sendmmsg."""
    try:
        batch = UdpBatch(sock, size, recv_size, send_size)
        batch.probe()
        return batch
    except BatchUnavailable:
        return PlainBatch(sock, size, recv_size, send_size)


def _address_of(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
