"""The UDP telemetry driver: ``udp://HOST:PORT`` resolved once, datagrams sent without waiting.

Thin on purpose: the packets come from :mod:`thruster_hil.firmware_bridge.downlink` (sans-IO),
this module only resolves the address at start-up and hands each packet to a non-blocking,
connected UDP socket, one packet per datagram, no framing (UDP keeps datagram boundaries, so the
serial line's COBS and 0x00 delimiter are not used).

It must never slow or stall the control loop. :meth:`UdpSender.send` is the socket's whole
contract: non-blocking, and a send that would block (EAGAIN), that the kernel refuses (ENOBUFS;
ECONNREFUSED after an ICMP port-unreachable when nothing listens) or that fails in any other way
is dropped and counted by cause, never retried or raised. :meth:`UdpSender.submit` is what the
loop calls: it only appends the datagram to a bounded queue (a full queue drops it, counted as
``queue_full``) that a daemon thread sends from every few milliseconds. The send system call
(2 to 5 us a datagram on loopback, the kernel's delivery and the receiver's wake-up included)
then runs on that thread, with the GIL released, beside the loop instead of in it: measured in
benchmarks/stream.py, it halves what the stream costs a SIL run.
"""

from __future__ import annotations

import collections
import errno
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SCHEME = "udp"


class StreamUrlError(ValueError):
    """A ``--stream`` URL that is not ``udp://HOST:PORT`` or whose host does not resolve."""


@dataclass(frozen=True)
class StreamTarget:
    """A resolved stream address: what the URL said and the socket address it names."""

    url: str
    host: str
    port: int
    family: int
    sockaddr: tuple

    @property
    def address(self) -> str:
        """The resolved address as text (``127.0.0.1:5005``, ``[::1]:5005``)."""
        ip = self.sockaddr[0]
        port = self.sockaddr[1]
        return f"[{ip}]:{port}" if self.family == socket.AF_INET6 else f"{ip}:{port}"


def parse_url(url: str) -> tuple[str, int]:
    """``udp://HOST:PORT`` -> (HOST, PORT), PORT 1..65535 (an IPv6 host in brackets). Pure: no
    lookup. :class:`StreamUrlError` saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number or out of range, a bad bracket
        raise StreamUrlError(f"expected udp://HOST:PORT with PORT 1..65535 ({exc})") from None
    if parts.scheme.lower() != SCHEME:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise StreamUrlError(f"expected udp://HOST:PORT, got {got}")
    if not parts.hostname:
        raise StreamUrlError("expected udp://HOST:PORT, got no host")
    if port is None:
        raise StreamUrlError("expected udp://HOST:PORT, got no port")
    if not 1 <= port <= 65535:
        raise StreamUrlError(f"expected a port 1..65535, got {port}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise StreamUrlError("expected udp://HOST:PORT and nothing else")
    return parts.hostname, port


def resolve(url: str) -> StreamTarget:
    """Parse and resolve the URL once, at start-up (the first address getaddrinfo gives).
    :class:`StreamUrlError` if it is malformed or the host does not resolve."""
    host, port = parse_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StreamUrlError(f"cannot resolve host {host!r}: {why}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return StreamTarget(url, host, port, family, sockaddr)


#: Send failures by cause, as summary.json names them.
_CAUSES = {
    errno.EAGAIN: "would_block",
    errno.EWOULDBLOCK: "would_block",
    errno.ENOBUFS: "no_buffers",
    errno.ECONNREFUSED: "refused",
}


#: Datagrams the queue holds before :meth:`UdpSender.submit` drops (at 5000 a second, 0.4 s).
QUEUE_LIMIT = 2048
#: How often the sender thread wakes to send what was queued [s] (a pace, not a deadline).
SEND_INTERVAL_S = 0.002


@dataclass
class UdpSender:
    """A non-blocking connected UDP socket to one :class:`StreamTarget`, and the thread that
    sends what :meth:`submit` queues. Neither :meth:`send` nor :meth:`submit` ever raises or
    waits; ``sent``, ``dropped`` and ``dropped_by_cause`` count what became of each datagram
    (final once :meth:`close` returns)."""

    target: StreamTarget
    sent: int = 0
    dropped: int = 0
    dropped_by_cause: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sock = socket.socket(self.target.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.target.sockaddr)  # UDP: no packet, only the default destination
        except OSError as exc:
            sock.close()
            raise StreamUrlError(f"cannot send to {self.target.address}: {exc.strerror}") from None
        self._sock = sock
        self._send = sock.send
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def send(self, datagram) -> bool:
        """Send one datagram now or drop it (counted); True if the kernel took it."""
        try:
            self._send(datagram)
        except OSError as exc:
            self._drop(_CAUSES.get(exc.errno, "other"))
            return False
        self.sent += 1
        return True

    def submit(self, datagram: bytes) -> bool:
        """Queue one datagram for the sender thread (started by the first call); False, and
        dropped as ``queue_full``, when the queue already holds :data:`QUEUE_LIMIT`."""
        if len(self._queue) >= QUEUE_LIMIT:
            self._drop("queue_full")
            return False
        self._queue.append(datagram)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"stream to {self.target.address}", daemon=True
            )
            self._thread.start()
        return True

    def _drop(self, cause: str) -> None:
        self.dropped += 1
        self.dropped_by_cause[cause] = self.dropped_by_cause.get(cause, 0) + 1

    def _run(self) -> None:
        queue, send = self._queue, self.send
        while True:
            closing = self._closing
            while queue:
                send(queue.popleft())
            if closing:
                return
            self._wake.wait(SEND_INTERVAL_S)

    def close(self) -> None:
        """Send what is queued, stop the thread, close the socket (idempotent)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        while self._queue:  # (no thread: submit was never called, or it has ended)
            self.send(self._queue.popleft())
        self._sock.close()

    def stats(self) -> dict:
        """What summary.json's ``stream`` section says of this stream."""
        return {
            "url": self.target.url,
            "address": self.target.address,
            "datagrams_sent": self.sent,
            "datagrams_dropped": self.dropped,
            "dropped_by_cause": dict(sorted(self.dropped_by_cause.items())),
        }
