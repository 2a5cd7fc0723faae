"""The UDP telemetry driver: ``udp://HOST:PORT`` resolved once, datagrams sent without waiting.

Thin on purpose: the packets come from :mod:`thruster_hil.firmware_bridge.downlink` (sans-IO),
this module only resolves the address at start-up, connects a non-blocking UDP socket and hands
it to the sender process, one packet per datagram, no framing (UDP keeps datagram boundaries, so
the serial line's COBS and 0x00 delimiter are not used).

It must never slow or stall the control loop, so the loop never makes a system call for it: it
writes each packet into a slot of a shared-memory ring and publishes it, and a small process of
its own (:mod:`thruster_hil.firmware_bridge.ring_sender`, standard library only) sends the slots
as datagrams. A send that would block (EAGAIN), that the kernel refuses (ENOBUFS; ECONNREFUSED
after an ICMP port-unreachable when nothing listens) or that fails in any other way is dropped
and counted by cause there, never retried or raised; a ring the sender has not emptied drops the
packet in the loop (``ring_full``). A thread in this process did the sending before: its send
calls took the GIL from the loop, 16 to 19 % of a SIL run's cycles (docs/protocol.md section 10).
"""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from thruster_hil.firmware_bridge import ring_sender

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


@dataclass
class UdpSender:
    """A connected UDP socket to one :class:`StreamTarget`, sent from by its own process.

    The socket is made and connected here (a failure: :class:`StreamUrlError`, at start-up),
    then handed with a shared-memory ring to the sender process
    (:mod:`thruster_hil.firmware_bridge.ring_sender`), which sends each packet published in the
    ring as one datagram; this process keeps no copy of the socket. The loop publishes by
    :meth:`submit` (bytes, from Python) or, every control cycle, by the numba kernel
    :func:`thruster_hil.firmware_bridge.downlink.put_cycle_ring` on :attr:`ring`. Neither ever
    waits: a full ring drops the packet (``ring_full``), and the sender drops what the kernel
    will not take at once (``would_block``, ``no_buffers``, ``refused``, ``other``).
    :meth:`close` ends the sender after it has sent the rest; the counts are final then.
    Started here, so the process start (tens of ms) is never in a cycle.
    """

    target: StreamTarget
    #: The length of every datagram of this stream [bytes] (at most a slot, SLOT_BYTES).
    datagram_bytes: int
    slot_count: int = ring_sender.SLOTS
    #: How often the sender process looks for new packets [s].
    poll_s: float = ring_sender.POLL_S

    def __post_init__(self) -> None:
        if not 0 < self.datagram_bytes <= ring_sender.SLOT_BYTES:
            raise ValueError(
                f"datagrams of 1..{ring_sender.SLOT_BYTES} bytes, not {self.datagram_bytes}"
            )
        sock = socket.socket(self.target.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.target.sockaddr)  # UDP: no packet, only the default destination
        except OSError as exc:
            sock.close()
            raise StreamUrlError(f"cannot send to {self.target.address}: {exc.strerror}") from None
        with sock:
            self._start(sock)

    def _start(self, sock: socket.socket) -> None:
        size = ring_sender.ring_bytes(self.slot_count)
        fd = _shared_fd(size)
        try:
            # populated now: the loop never takes a page fault on a slot it writes first
            populate = getattr(mmap, "MAP_POPULATE", 0)
            self._mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | populate)
            #: The whole ring (uint8), its counters (:mod:`.ring_sender`'s word indices) and
            #: its slots, views of one shared mapping.
            self.ring = np.frombuffer(self._mapping, np.uint8)
            self.words = np.frombuffer(self._mapping, np.int64, ring_sender.HEADER_WORDS)
            self.slots = np.frombuffer(
                self._mapping,
                np.uint8,
                self.slot_count * ring_sender.SLOT_BYTES,
                ring_sender.HEADER_BYTES,
            ).reshape(self.slot_count, ring_sender.SLOT_BYTES)
            self.words[ring_sender.SEQ] = 0x3FFF  # so the first packet's count is 0
            self.words[ring_sender.N_SLOTS] = self.slot_count
            self.words[ring_sender.DATAGRAM_BYTES] = self.datagram_bytes
            self.words[ring_sender.POLL_US] = max(1, round(self.poll_s * 1e6))
            # -I: the standard library and this package only, no environment, no cwd on the path
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-m", SENDER_MODULE, str(fd), str(sock.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(fd, sock.fileno()),
            )
        finally:
            os.close(fd)
        _off_this_core(self.process.pid)
        if self.process.stdout.read(1) != b"R":  # attached: what it is sent now goes out
            self.process.wait()
            raise StreamUrlError(
                f"the stream's sender process did not start (exit {self.process.returncode})"
            )
        self.process.stdout.close()
        self._closed = False

    def submit(self, datagram: bytes) -> bool:
        """Publish one datagram (:attr:`datagram_bytes` long) for the sender; False, and
        dropped as ``ring_full``, when the sender has not yet taken the ring's every slot."""
        if len(datagram) != self.datagram_bytes:
            raise ValueError(
                f"a datagram of {len(datagram)} bytes on a stream of {self.datagram_bytes}"
            )
        w = self.words
        published = int(w[ring_sender.PUBLISHED])
        if published - int(w[ring_sender.CONSUMED]) >= self.slot_count:
            w[ring_sender.RING_FULL] += 1
            return False
        self.slots[published % self.slot_count, : self.datagram_bytes] = np.frombuffer(
            datagram, np.uint8
        )
        w[ring_sender.PUBLISHED] = published + 1  # after the slot is whole
        return True

    def close(self) -> None:
        """End the stream: the sender sends what is published, then exits (idempotent). Any
        packet it could not take (it died first) is counted ``unsent``."""
        if self._closed:
            return
        self._closed = True
        self.process.stdin.close()  # end of file: the sender's signal to finish
        try:
            self.process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # never seen: a safety net, not a pace
            self.process.kill()
            self.process.wait()

    @property
    def sent(self) -> int:
        return int(self.words[ring_sender.SENT])

    @property
    def dropped_by_cause(self) -> dict[str, int]:
        """Drops so far by cause (final once :meth:`close` returns)."""
        w = self.words
        out = {"ring_full": int(w[ring_sender.RING_FULL])}
        for word, name in ring_sender.SENDER_CAUSES.items():
            out[name] = int(w[word])
        if self._closed:
            out["unsent"] = int(w[ring_sender.PUBLISHED] - w[ring_sender.CONSUMED])
        return {k: v for k, v in sorted(out.items()) if v}

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_cause.values())

    def stats(self) -> dict:
        """What summary.json's ``stream`` section says of this stream."""
        by_cause = self.dropped_by_cause
        return {
            "url": self.target.url,
            "address": self.target.address,
            "datagrams_sent": self.sent,
            "datagrams_dropped": sum(by_cause.values()),
            "dropped_by_cause": by_cause,
        }


#: The sender process's module (run with ``python -I -m``).
SENDER_MODULE = ring_sender.__name__
#: How long :meth:`UdpSender.close` lets the sender finish before killing it [s]: it sends at
#: most a ring's worth of non-blocking datagrams, milliseconds.
CLOSE_TIMEOUT_S = 30.0


def _off_this_core(pid: int) -> None:
    """Let process ``pid`` run on every CPU this process may use but the one the calling thread
    (the control loop's) runs on now. Measured on the 2-vCPU bench machine: a process left to
    the scheduler shares the loop's core often enough to cost it 10 to 50 % of its cycles; kept
    off it, a process spinning without pause costs the loop 8 % (docs/protocol.md section 10).
    Linux only; elsewhere, or with one CPU, the scheduler decides."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            here = int(f.read().rsplit(b")", 1)[1].split()[36])  # field 39: the CPU last run on
        others = os.sched_getaffinity(0) - {here}
        if others:
            os.sched_setaffinity(pid, others)
    except (AttributeError, OSError, ValueError, IndexError):
        pass


def _shared_fd(size: int) -> int:
    """A file descriptor of ``size`` zeroed bytes to share with the sender: a memfd (Linux: no
    name in any file system, so nothing is left behind however the run ends), else an unlinked
    temporary file."""
    try:
        fd = os.memfd_create("thruster-hil-stream")
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd
