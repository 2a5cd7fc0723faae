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
(default :data:`POLL_S`) to send what was published, until its stdin (a pipe from the parent)
reaches end of file, when it sends the rest and exits 0. The parent closes that pipe to end the
stream; if the parent dies, however it dies, the kernel closes it, so the sender never outlives
its run.
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
#: Datagrams per sendmmsg call at most (the kernel's UIO_MAXIOV).
BATCH = 1024


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
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class BatchSender:
    """:func:`send_published` with Linux's sendmmsg(2): up to :data:`BATCH` slots in one system
    call, through ctypes (the standard library has no sendmmsg). The machine this runs on gives
    the loop's core and the sender's no independent time (a process spinning beside the loop
    halves its cycles a second: docs/protocol.md section 10), so the sender's CPU per datagram
    is part of what the stream costs the loop; one call per batch instead of one per datagram
    (and no Python per datagram) cuts it by about half. Each datagram's fate is counted exactly
    as :func:`send_published` counts it: sendmmsg returns how many went, and fails (errno) only
    when the first of the call cannot; that one is dropped, and the call goes on from the next.

    Nobody listening: on loopback every datagram to a closed port makes the kernel build an ICMP
    port-unreachable in the sender's own system call (no rate limit on loopback), several us
    each. After a refusal, each call sends one datagram to ask again; if the next send is refused
    too, the rest of the batch is dropped as ``refused`` without being sent; if it goes, sending
    resumes as normal. A remote host's ICMP comes later, so there this never holds anything back.
    """

    def __init__(self, sock: socket.socket, mapping: mmap.mmap, words: memoryview):
        libc = ctypes.CDLL(None, use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self._sendmmsg.restype = ctypes.c_int
        self._fd, self._words = sock.fileno(), words
        n, size = words[N_SLOTS], words[DATAGRAM_BYTES]
        self._anchor = ctypes.c_char.from_buffer(mapping)  # (released by close())
        base = ctypes.addressof(self._anchor) + HEADER_BYTES
        self._iov = (_IoVec * n)()
        self._msgs = (_MMsgHdr * n)()
        for i in range(n):
            self._iov[i].iov_base, self._iov[i].iov_len = base + i * SLOT_BYTES, size
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1
        self._msgs0 = ctypes.addressof(self._msgs)
        self._n = n
        self._refused = False  # the destination's port was closed at the last refusal

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
            done = sendmmsg(fd, self._msgs0 + slot * step, count, 0)
            if done > 0:
                sent += done
                i += done
                if self._refused:
                    if probe_sent:  # the call after the probe went too: someone listens again
                        self._refused = False
                    probe_sent = True
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            word = ERRNO_WORD.get(err, OTHER)
            if word == REFUSED and self._refused and probe_sent:
                failed[REFUSED] += last - i  # the probe was refused too: the rest is not sent
                break
            self._refused = self._refused or word == REFUSED
            failed[word] += 1
            i += 1
        return _settle(words, sent, failed, first, last)

    def close(self) -> None:
        del self._msgs, self._iov, self._anchor


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

        poll_s = words[POLL_US] * 1e-6 or POLL_S
        os.write(ready_fd, b"R")
        os.close(ready_fd)
        open_ = True
        while open_:
            send()
            readable, _, _ = select.select([control_fd], [], [], poll_s)
            if readable and not os.read(control_fd, 4096):
                open_ = False  # the parent has ended the stream, or died: the rest, then out
        while send():
            pass
        if batch is not None:
            batch.close()
        sock.close()
        words.release()
        ring.release()
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ring_fd, sock_fd = (int(a) for a in argv)
    return serve(ring_fd, sock_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
