"""The stream's sender process: datagrams out of a shared-memory ring, sent off the loop's GIL.

Standard library only, on purpose: it is started once per stream as ``python -I -m
thruster_hil.firmware_bridge.ring_sender RING_FD SOCKET_FD`` and must start in tens of
milliseconds, so it never imports numba or the rest of the package (tests/test_stream.py checks).
The loop (:class:`thruster_hil.firmware_bridge.udp.UdpSender`, and the numba kernel that packs
each cycle, :func:`thruster_hil.firmware_bridge.downlink.put_cycle_ring`) writes whole packets
into slots of the ring and publishes each one by raising a count; this process sends every
published slot as one datagram on the connected, non-blocking UDP socket it inherited, in order,
and never retries: a send that fails is dropped and counted by cause, as the counters below say.

Why a process and not a thread: a thread's send calls take the GIL from the control loop (about
5 us of the 49 us of a SIL cycle, docs/protocol.md section 10); a process takes nothing from it
but a share of the other core.

The ring, one shared mapping (a memfd: no name anywhere, gone when both processes have closed
it): :data:`HEADER_BYTES` of int64 counters, then :data:`SLOTS` slots of :data:`SLOT_BYTES`.
The writer's counters and the sender's sit on different cache lines (each side writes only its
own). Publication order: the writer completes a slot, then stores ``PUBLISHED`` + 1; the sender
loads ``PUBLISHED``, sends the slots below it, then stores ``CONSUMED``, after which the writer
may reuse them. Aligned 8-byte stores are single stores on x86-64 and AArch64, and x86-64 keeps
stores in order (an AArch64 host would need a release fence after the slot: not done here).

Its life: it writes one byte (``R``) on stdout once it is attached, then wakes every ``POLL_US``
(default :data:`POLL_S`; less often while packets only trickle in, :class:`Pace`) to send what
was published, until its stdin (a pipe from the parent) reaches end of file, when it sends the
rest and exits 0. The parent closes that pipe to end the stream; if the parent dies, however it
dies, the kernel closes it, so the sender never outlives its run.
SIGINT is ignored: a Ctrl-C in the terminal reaches the whole process group, and the parent
(which stops the burn in order) decides when the stream ends.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import signal
import socket
import sys

# ---- the ring's layout (int64 word indices into the header) ----------------------------------
#: Written by the loop: packets published (slot ``i % SLOTS`` holds packet ``i``).
PUBLISHED = 0
#: Written by the loop: the last packet's CCSDS sequence count (0x3FFF before the first).
SEQ = 1
#: Written by the loop: packets dropped because the ring was full (the sender fell behind).
RING_FULL = 2
#: Written by the loop: the five counters every packet carries (frames sent, frames received,
#: bad frames, retries, datagrams dropped so far), contiguous, in HOST_CYCLE's order.
COUNTERS = 3
#: Written by the sender (its own cache line): packets taken from the ring, and their fate.
CONSUMED = 8
SENT = 9
WOULD_BLOCK = 10
NO_BUFFERS = 11
REFUSED = 12
OTHER = 13
#: Written by the sender once it is attached: how it sends (:data:`SEND_PATHS`).
SEND_PATH = 14
#: Written by the sender: the errno with which the kernel refused UDP segmentation offload
#: (setsockopt or a send), 0 if it never did; the sender then sends a datagram a message.
GSO_REFUSED = 15
#: Written once before the sender starts (a third cache line): the slot count, the datagram
#: length [bytes] and how often the sender looks for new packets [us].
N_SLOTS = 16
DATAGRAM_BYTES = 17
POLL_US = 18
HEADER_WORDS = 24
HEADER_BYTES = 8 * HEADER_WORDS

#: Datagram drops by cause as summary.json names them: the sender's, word -> name.
SENDER_CAUSES = {
    WOULD_BLOCK: "would_block",
    NO_BUFFERS: "no_buffers",
    REFUSED: "refused",
    OTHER: "other",
}
#: A failed send's errno -> its counter word (anything else: OTHER).
ERRNO_WORD = {
    errno.EAGAIN: WOULD_BLOCK,
    errno.EWOULDBLOCK: WOULD_BLOCK,
    errno.ENOBUFS: NO_BUFFERS,
    errno.ECONNREFUSED: REFUSED,
}

#: Slots in the ring: at 20,000 cycles a second (a lockstep SIL run) 0.2 s of packets, while the
#: sender empties it every :data:`POLL_S` (40 times as often).
SLOTS = 4096
#: Bytes per slot: a HOST_CYCLE packet (222) rounded up to 8.
SLOT_BYTES = 224
#: How often the sender looks for new packets by default [s] (a pace, not a deadline). Each
#: wake-up of the sender's core costs the loop's core time on this 2-vCPU machine, so rarely; at
#: 20,000 cycles a second a wake-up sends 100 datagrams, within a receiver's default socket
#: buffer (Linux: 208 KiB, about 1 KiB a small datagram); a REALTIME run sends 0 or 1.
POLL_S = 0.005
#: The longest pause between looks while packets only trickle in [s] (:class:`Pace`): after
#: an empty look the pause doubles from :data:`POLL_S` up to this. A packet then waits at most
#: this long (a display's frame), and the sender of a REALTIME run wakes its core about 30
#: times a second, not 200 (measured, a packet every 0.5 s: under 1 ms of CPU a second,
#: against 8.8 ms).
IDLE_POLL_S = 0.04
#: Packets a look that make a trickle (:class:`Pace`): a REALTIME run's one a period, or two.
TRICKLE = 4
#: Datagrams per sendmmsg call at most (the kernel's UIO_MAXIOV).
BATCH = 1024
#: Datagrams per UDP GSO message at most: Linux's UDP_MAX_SEGMENTS (64 from 4.18, when UDP GSO
#: came, 128 in recent kernels; 64 is taken everywhere). 64 HOST_CYCLE packets are 14,208 bytes,
#: far below the 65,507 of one UDP message.
GSO_SEGMENTS = 64
#: How the sender sends (the SEND_PATH word -> summary.json's ``send_path``): ``send`` one
#: Python send a datagram (no sendmmsg), ``sendmmsg`` a datagram a message, ``udp_gso`` up to
#: :data:`GSO_SEGMENTS` datagrams a message, split by the kernel.
SEND_PATHS = {0: "send", 1: "sendmmsg", 2: "udp_gso"}
#: <netinet/udp.h>: the UDP socket option level and Linux's segmentation offload option.
SOL_UDP = 17
UDP_SEGMENT = 103
#: A GSO send's errno that means "no segmentation offload here" (rather than a failed datagram):
#: ENOPROTOOPT/EOPNOTSUPP (a kernel before 4.18, or not a UDP socket), EINVAL (a size or count
#: the kernel will not segment), EIO (a socket or route that cannot checksum a GSO packet:
#: UDP-Lite, IPsec, no checksum offload).
GSO_REFUSALS = frozenset(
    {errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EIO}
)


def ring_bytes(slots: int = SLOTS) -> int:
    """The size of a ring of ``slots`` slots [bytes]."""
    return HEADER_BYTES + slots * SLOT_BYTES


def send_published(sock: socket.socket, ring: memoryview, words: memoryview) -> int:
    """Send every slot published since the last call, one datagram each, in order, counting
    each as sent or dropped by cause (never retried, never raised); returns how many."""
    first, last = words[CONSUMED], words[PUBLISHED]
    if first == last:
        return 0
    slots, size = words[N_SLOTS], words[DATAGRAM_BYTES]
    send = sock.send
    sent = 0
    failed = dict.fromkeys(SENDER_CAUSES, 0)
    for i in range(first, last):
        at = HEADER_BYTES + (i % slots) * SLOT_BYTES
        try:
            send(ring[at : at + size])
        except OSError as exc:
            failed[ERRNO_WORD.get(exc.errno, OTHER)] += 1
        else:
            sent += 1
    return _settle(words, sent, failed, first, last)


def _settle(words, sent: int, failed: dict, first: int, last: int) -> int:
    """Book a batch's sends and failures by cause, then hand slots ``first..last`` back to
    the loop; the number of slots taken."""
    words[SENT] += sent
    for word, n in failed.items():
        if n:
            words[word] += n
    words[CONSUMED] = last  # only now may the loop reuse these slots
    return last - first


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),  # (an _IoVec array: set as an address, no ctypes cast)
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class BatchSender:
    """:func:`send_published` with Linux's sendmmsg(2) and, where the kernel has it, UDP
    segmentation offload (GSO), through ctypes (the standard library has neither sendmmsg nor
    a way to batch sends). The machine this runs on gives the loop's core and the sender's no
    independent time (a process spinning beside the loop halves its cycles a second:
    docs/protocol.md section 10), so the sender's CPU per datagram is part of what the stream
    costs the loop.

    With GSO (``setsockopt(SOL_UDP, UDP_SEGMENT, datagram_bytes)``) one message carries up to
    :data:`GSO_SEGMENTS` consecutive slots (one iovec each) and the kernel sends it as that many
    datagrams of exactly ``datagram_bytes``: one pass through the socket, IP and routing layers
    for 64 datagrams instead of 64 (the receiver gets one datagram a packet, as before). Without
    it (the kernel refused the option, or refuses a GSO send with one of :data:`GSO_REFUSALS`:
    the option is then cleared, the errno kept in ``GSO_REFUSED``, and the same slots go again
    a datagram a message, nothing lost) each message is one datagram, up to :data:`BATCH` a
    call.

    Each datagram's fate is counted as :func:`send_published` counts it: sendmmsg returns how
    many messages went, and fails (errno) only when the first of the call cannot; then that
    message's first datagram is dropped and counted by the errno, and the call goes on from the
    next datagram (a GSO message's others are sent in the next message: a datagram goes once or
    is dropped once, and one error report, say an ICMP refusal, costs one datagram either way).

    Nobody listening: on loopback every datagram (or GSO message) to a closed port makes the
    kernel build an ICMP port-unreachable in the sender's own system call (no rate limit on
    loopback), several us each. After a refusal, each call sends one datagram to ask again; if
    the next send is refused too, the rest of the batch is dropped as ``refused`` without being
    sent; if it goes, sending resumes as normal. A remote host's ICMP comes later, so there this
    never holds anything back.
    """

    def __init__(self, sock: socket.socket, mapping: mmap.mmap, words: memoryview):
        libc = ctypes.CDLL(None, use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self._sendmmsg.restype = ctypes.c_int
        self._sock, self._fd, self._words = sock, sock.fileno(), words
        n, size = words[N_SLOTS], words[DATAGRAM_BYTES]
        self._anchor = ctypes.c_char.from_buffer(mapping)  # (released by close())
        base = ctypes.addressof(self._anchor) + HEADER_BYTES
        self._iov = (_IoVec * n)()
        self._msgs = (_MMsgHdr * n)()  # a datagram a message: message i sends slot i
        iov0, iov_step = ctypes.addressof(self._iov), ctypes.sizeof(_IoVec)
        for i in range(n):
            self._iov[i].iov_base, self._iov[i].iov_len = base + i * SLOT_BYTES, size
            self._msgs[i].msg_hdr.msg_iov = iov0 + i * iov_step
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._msgs0 = ctypes.addressof(self._msgs)
        self._iov0, self._iov_step = iov0, iov_step
        self._gso_msgs = (_MMsgHdr * (BATCH // GSO_SEGMENTS))()  # set per call
        self._gso_msgs0 = ctypes.addressof(self._gso_msgs)
        self._gso_hdrs = [m.msg_hdr for m in self._gso_msgs]  # (made once: ctypes is slow)
        self._n = n
        self._refused = False  # the destination's port was closed at the last refusal
        self._gso = False
        try:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, size)
            self._gso = True
        except OSError as exc:
            words[GSO_REFUSED] = exc.errno or errno.EOPNOTSUPP
        words[SEND_PATH] = 2 if self._gso else 1

    @property
    def gso(self) -> bool:
        """True while up to :data:`GSO_SEGMENTS` datagrams go in one message."""
        return self._gso

    def _gso_refused(self, err: int) -> None:
        """The kernel will not segment on this socket: a datagram a message from now on."""
        self._gso = False
        self._words[GSO_REFUSED] = err
        self._words[SEND_PATH] = 1
        try:
            self._sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # (or every send fails, UDP-Lite)
        except OSError:
            pass

    def _gso_messages(self, slot: int, count: int) -> tuple[int, list[int]]:
        """Messages for ``count`` consecutive slots from ``slot``, up to GSO_SEGMENTS each;
        their address and their datagram counts."""
        counts = []
        hdrs, iov0, step = self._gso_hdrs, self._iov0, self._iov_step
        for j in range(0, count, GSO_SEGMENTS):
            c = min(GSO_SEGMENTS, count - j)
            hdr = hdrs[len(counts)]
            hdr.msg_iov, hdr.msg_iovlen = iov0 + (slot + j) * step, c
            counts.append(c)
        return self._gso_msgs0, counts

    def send_published(self) -> int:
        """As :func:`send_published`: every slot published since the last call; how many."""
        words = self._words
        first, last = words[CONSUMED], words[PUBLISHED]
        if first == last:
            return 0
        n, sendmmsg, fd = self._n, self._sendmmsg, self._fd
        step = ctypes.sizeof(_MMsgHdr)
        sent = 0
        failed = dict.fromkeys(SENDER_CAUSES, 0)
        probe_sent = False  # refused before: one datagram of this call went out to ask again
        i = first
        while i < last:
            slot = i % n
            count = min(last - i, n - slot, BATCH)  # contiguous slots, not past the ring's end
            if self._refused and not probe_sent:
                count = 1
            if self._gso and count > 1:
                msgs, counts = self._gso_messages(slot, count)
            else:  # (a lone datagram is the same message either way)
                msgs, counts = self._msgs0 + slot * step, None
            done = sendmmsg(fd, msgs, len(counts) if counts else count, 0)
            if done > 0:
                went = sum(counts[:done]) if counts else done
                sent += went
                i += went
                if self._refused:
                    if probe_sent:  # the call after the probe went too: someone listens again
                        self._refused = False
                    probe_sent = True
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if self._gso and err in GSO_REFUSALS:  # (UDP-Lite: even a lone datagram, EIO)
                self._gso_refused(err)  # nothing of that message went: the same slots again
                continue
            word = ERRNO_WORD.get(err, OTHER)
            if word == REFUSED and self._refused and probe_sent:
                failed[REFUSED] += last - i  # the probe was refused too: the rest is not sent
                break
            self._refused = self._refused or word == REFUSED
            failed[word] += 1  # its first datagram (a GSO message: the rest go in the next)
            i += 1
        return _settle(words, sent, failed, first, last)

    def close(self) -> None:
        del self._msgs, self._gso_hdrs, self._gso_msgs, self._iov, self._anchor


class Pace:
    """How long the sender waits before it looks again [s], from how many packets the last
    look sent: :data:`POLL_S` (the stream's ``POLL_US``) while packets come, and while a
    trickle of them (at most :data:`TRICKLE` a look: a REALTIME run publishes one a control
    period) pauses, twice as long after each empty look, up to :data:`IDLE_POLL_S`. After a
    larger look the pause stays short even when the next looks find nothing: a burst (a
    lockstep run, ``monitor`` catching up with a run's rows) may come on at once, and a long
    pause would gather it into one batch too large for a receiver's socket buffer. Before the
    first packet the pause stays short too (the loop starts right after the stream)."""

    def __init__(self, poll_s: float = POLL_S, idle_s: float = IDLE_POLL_S):
        self.poll_s, self.idle_s = poll_s, max(poll_s, idle_s)
        self.wait_s = poll_s
        self._trickle = False

    def after(self, sent: int) -> float:
        if sent:
            self._trickle = sent <= TRICKLE
            self.wait_s = self.poll_s
        elif self._trickle:
            self.wait_s = min(2.0 * self.wait_s, self.idle_s)
        return self.wait_s


def _batch_sender(sock: socket.socket, mapping: mmap.mmap, words: memoryview):
    """A :class:`BatchSender` where sendmmsg exists (Linux), else None."""
    try:
        return BatchSender(sock, mapping, words)
    except (AttributeError, OSError, TypeError):
        return None


def serve(ring_fd: int, sock_fd: int, control_fd: int = 0, ready_fd: int = 1) -> int:
    """Attach to the ring and the socket, say ready, send until ``control_fd`` ends; 0."""
    with mmap.mmap(ring_fd, 0) as mapping:
        os.close(ring_fd)
        ring = memoryview(mapping)
        words = ring[:HEADER_BYTES].cast("q")
        sock = socket.socket(fileno=sock_fd)
        sock.setblocking(False)
        batch = _batch_sender(sock, mapping, words)
        if batch is not None:
            send = batch.send_published
        else:

            def send() -> int:
                return send_published(sock, ring, words)

        pace = Pace(words[POLL_US] * 1e-6 or POLL_S)
        # poll() registered once: each wake-up costs about 24 us of CPU here (select(): 30),
        # most of it the timer and the switch, 200 times a second
        control = select.poll()
        control.register(control_fd, select.POLLIN)
        os.write(ready_fd, b"R")
        os.close(ready_fd)
        open_ = True
        while open_:
            ready = control.poll(pace.after(send()) * 1e3)
            if ready and not os.read(control_fd, 4096):
                open_ = False  # the parent has ended the stream, or died: the rest, then out
        while send():
            pass
        if batch is not None:
            batch.close()
        sock.close()
        words.release()
        ring.release()
    return 0


#: How much nicer than its run the sender is (os.nice): when the scheduler puts the loop on
#: the sender's CPU after all (the loop's thread is not pinned), the loop wins; the sender
#: needs a few per cent of a CPU and a nice-10 process still gets about a tenth of one beside
#: a busy nice-0 process. Not SCHED_IDLE: that could starve it on a loaded machine until the
#: ring is full.
NICER = 10


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(NICER)
    except OSError:
        pass
    ring_fd, sock_fd = (int(a) for a in argv)
    return serve(ring_fd, sock_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
