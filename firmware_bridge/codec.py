"""The wire codec, sans-IO: bytes in, messages or typed protocol errors out; messages in, bytes out.

No serial port, no os, no time here (h11's rule): the link, the emulator and the replay tool all
feed bytes to a :class:`Decoder` and write what :func:`encode` returns.

Wire format (docs/protocol.md)::

    frame  = COBS(packet) || 0x00                        at most MAX_WIRE_BYTES (64)
    packet = primary header (6) | secondary header (2) | payload | CRC-16 (2)   big-endian
    primary header (CCSDS 133.0-B-2): version 0 (3 b) | type 1=TC 0=TM (1 b) | sec. header 1 (1 b)
                                      | APID (11 b) | sequence flags 0b11 (2 b) | count (14 b)
                                      | data length = len(secondary header..CRC) - 1 (16 b)
    secondary header: msg_id (8 b) | msg_ver (4 b) | flags (4 b)
    CRC-16/CCITT-FALSE over primary header .. payload (binascii.crc_hqx with init 0xFFFF)

COBS comes from the ``cobs`` package (a small, well-kept C implementation), the CRC from the
standard library: neither is worth writing again.
"""

from __future__ import annotations

import binascii
import struct
from binascii import crc_hqx
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cobs import cobs as _cobs
from thruster_hil.firmware_bridge.dictionary import BY_ID, MAX_WIRE_BYTES, MESSAGES, MessageSpec

MSG_VERSION = 1
SEQ_MODULO = 1 << 14
_PH = struct.Struct(">HHHBB")  # id word, sequence word, data length, msg_id, ver|flags
_CRC = struct.Struct(">H")
MIN_PACKET = _PH.size + _CRC.size


class ProtocolError(Exception):
    """Anything wrong with bytes from the wire. ``kind`` names the class of error."""

    kind = "protocol"


class CobsError(ProtocolError):
    kind = "cobs"


class CrcError(ProtocolError):
    kind = "crc"


class LengthError(ProtocolError):
    kind = "length"


class HeaderError(ProtocolError):
    kind = "header"


class UnknownMessage(ProtocolError):
    kind = "unknown_id"


class FrameTooLong(ProtocolError):
    kind = "too_long"


class EncodeError(ProtocolError):
    """A message that cannot be encoded: unknown name, missing or extra field, value out of
    range for its type."""

    kind = "encode"


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded (or to-be-encoded) message. ``fields`` maps field names to ints (tuples for
    array fields)."""

    name: str
    seq: int
    fields: dict[str, Any] = field(default_factory=dict)
    flags: int = 0

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    @property
    def spec(self) -> MessageSpec:
        return MESSAGES[self.name]


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0)."""
    return binascii.crc_hqx(data, 0xFFFF)


def _values(spec: MessageSpec, fields: dict[str, Any]) -> list[int]:
    names = {f.name for f in spec.fields}
    extra = set(fields) - names
    if extra:
        raise EncodeError(f"{spec.name}: unknown field(s) {sorted(extra)}")
    out: list[int] = []
    for f in spec.fields:
        if f.name not in fields:
            raise EncodeError(f"{spec.name}: missing field {f.name!r}")
        v = fields[f.name]
        items = list(v) if f.count > 1 else [v]
        if len(items) != f.count:
            raise EncodeError(f"{spec.name}.{f.name}: expected {f.count} values, got {len(items)}")
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int):
                try:
                    x = int(x)
                except (TypeError, ValueError):
                    raise EncodeError(
                        f"{spec.name}.{f.name}: expected an integer, got {x!r}"
                    ) from None
            out.append(x)
    return out


def encode_packet(name: str, seq: int, flags: int = 0, /, **fields: Any) -> bytes:
    """The packet (headers, payload, CRC) of one message, before COBS framing.

    ``name``, ``seq`` and the header ``flags`` are positional-only, so a message field that is
    itself called ``flags`` (VALVE_REPORT) goes into ``fields``.
    """
    return _encode_packet(name, seq, flags, fields)


def _encode_packet(name: str, seq: int, flags: int, fields: dict[str, Any]) -> bytes:
    enc = _ENCODING.get(name)
    if enc is None:
        raise EncodeError(f"unknown message {name!r}") from None
    if not 0 <= flags <= 0xF:
        raise EncodeError(f"{name}: flags must fit in 4 bits, got {flags!r}")
    # Fast path (every FIRE and VALVE_REPORT): the field values in order (one C call), headers
    # and payload in one precompiled pack, struct checking the types, ranges and the number of
    # values; on any problem the slow path accepts what it can (bool, float) or names the field.
    spec, pack_fields, n_fields = enc
    if len(fields) == n_fields:
        try:
            body = pack_fields(fields, 0xC000 | (seq % SEQ_MODULO), _VER_BITS | flags)
        except (KeyError, TypeError, struct.error):
            pass
        else:
            return body + _CRC.pack(crc_hqx(body, 0xFFFF))
    try:
        payload = spec.struct.pack(*_values(spec, fields))
    except struct.error as exc:
        raise EncodeError(f"{name}: {exc}") from None
    word0 = (1 << 12 if spec.is_command else 0) | (1 << 11) | spec.apid
    word1 = (0b11 << 14) | (seq % SEQ_MODULO)
    head = _PH.pack(word0, word1, len(payload) + 3, spec.id, (MSG_VERSION << 4) | flags)
    body = head + payload
    return body + _CRC.pack(crc16(body))


def _encoding(spec: MessageSpec) -> tuple:
    """What _encode_packet needs of a message, worked out once: the spec, its packer
    (:func:`_fields_packer`) and its number of fields."""
    return spec, _fields_packer(spec), len(spec.fields)


def _fields_packer(spec: MessageSpec) -> Callable[[dict, int, int], bytes]:
    """``(fields, word1, ver_flags) -> headers and payload`` for one message: one precompiled
    struct for the primary and secondary headers and the payload, its constant header values
    (word 0: TC flag, secondary header flag, APID; the data length; the message id), and the
    field values taken from the dict in order, an array's spread in its place, written out
    from the dictionary as one call (as :func:`_fields_builder`). A missing field raises
    KeyError; a value struct cannot pack, a wrong number of values or an array that is not
    one raise struct.error or TypeError."""
    pack = struct.Struct(_PH.format + spec.struct.format.lstrip("<>!=@")).pack
    word0 = (1 << 12 if spec.is_command else 0) | (1 << 11) | spec.apid
    args = [f"{word0}, w1, {spec.payload_len + 3}, {spec.id}, vf"]
    args += [f"*f[{f.name!r}]" if f.count > 1 else f"f[{f.name!r}]" for f in spec.fields]
    return eval(f"lambda f, w1, vf: pack({', '.join(args)})", {"pack": pack})


_VER_BITS = MSG_VERSION << 4
_ENCODING = {name: _encoding(spec) for name, spec in MESSAGES.items()}


def encode(name: str, seq: int, flags: int = 0, /, **fields: Any) -> bytes:
    """The wire frame of one message: ``COBS(packet) + b"\\x00"`` (arguments as
    :func:`encode_packet`)."""
    return encode_fields(name, seq, flags, fields)


def encode_fields(name: str, seq: int, flags: int, fields: dict[str, Any]) -> bytes:
    """:func:`encode` with the fields as one dict (no keyword unpacking): for callers that
    already hold them in a dict, every cycle."""
    return _cobs.encode(_encode_packet(name, seq, flags, fields)) + b"\x00"


def encode_message(msg: Message) -> bytes:
    return encode_fields(msg.name, msg.seq, msg.flags, msg.fields)


def decode_packet(packet: bytes) -> Message:
    """Decode one packet (COBS already removed). Raises a :class:`ProtocolError` subclass."""
    n = len(packet)
    if n < MIN_PACKET:
        raise LengthError(f"packet of {n} bytes is shorter than the {MIN_PACKET}-byte minimum")
    word0, word1, data_len, msg_id, ver_flags = _ph_unpack_from(packet)
    if data_len + 7 != n:
        raise LengthError(f"header says {data_len + 7} bytes, packet has {n}")
    crc = packet[-2] << 8 | packet[-1]
    if crc_hqx(packet[:-2], 0xFFFF) != crc:
        raise CrcError(f"CRC 0x{crc:04X} does not match the packet")
    if word0 >> 13 != 0 or not (word0 >> 11) & 1 or word1 >> 14 != 0b11:
        raise HeaderError(
            f"not a version-0 unsegmented space packet with a secondary header "
            f"(0x{word0:04X} 0x{word1:04X})"
        )
    if ver_flags >> 4 != MSG_VERSION:
        raise HeaderError(f"message version {ver_flags >> 4}, expected {MSG_VERSION}")
    known = _DECODING.get(msg_id)
    if known is None:
        raise UnknownMessage(f"unknown message id 0x{msg_id:02X}")
    spec, word0_id, payload_len, unpack_from, as_fields = known
    if word0 & 0x1FFF != word0_id:  # APID and TC/TM flag of this message
        is_tc = bool((word0 >> 12) & 1)
        raise HeaderError(f"{spec.name} on APID 0x{word0 & 0x7FF:03X} as {'TC' if is_tc else 'TM'}")
    if n - MIN_PACKET != payload_len:
        raise LengthError(f"{spec.name} payload of {n - MIN_PACKET} bytes, expected {payload_len}")
    out = as_fields(unpack_from(packet, 8))
    # Message(spec.name, seq, out, flags) without the frozen dataclass's __init__ (half the
    # cost; this runs for every frame on both ends of the wire).
    msg = _new(Message)
    _set_name(msg, spec.name)
    _set_seq(msg, word1 & 0x3FFF)
    _set_fields(msg, out)
    _set_flags(msg, ver_flags & 0xF)
    return msg


_ph_unpack_from = _PH.unpack_from
_new = object.__new__
_set_name = Message.name.__set__  # type: ignore[attr-defined]  (slot descriptors)
_set_seq = Message.seq.__set__  # type: ignore[attr-defined]
_set_fields = Message.fields.__set__  # type: ignore[attr-defined]
_set_flags = Message.flags.__set__  # type: ignore[attr-defined]


def _decoding(spec: MessageSpec) -> tuple:
    """What decode_packet needs of a message, worked out once: the spec, the low 13 bits of
    word 0 it must carry (TC flag, secondary header flag, APID), the payload length, the
    payload's unpack_from, and the function that turns the unpacked values into the fields
    dict (:func:`_fields_builder`)."""
    word0_id = (1 << 12 if spec.is_command else 0) | (1 << 11) | spec.apid
    return spec, word0_id, spec.payload_len, spec.struct.unpack_from, _fields_builder(spec)


def _fields_builder(spec: MessageSpec) -> Callable[[tuple], dict[str, Any]]:
    """``values -> {name: value (a tuple for an array field)}`` for one message, in field
    order, written out from the dictionary as one dict display: every decoded frame builds
    one, and a display with constant keys is several times quicker than zipping the names
    (the way namedtuple writes its classes; the source is only names and indices)."""
    items, i = [], 0
    for f in spec.fields:
        items.append(f"{f.name!r}: v[{i}:{i + f.count}]" if f.count > 1 else f"{f.name!r}: v[{i}]")
        i += f.count
    return eval(f"lambda v: {{{', '.join(items)}}}", {})


_DECODING = {msg_id: _decoding(spec) for msg_id, spec in BY_ID.items()}


def decode_frame(frame: bytes) -> Message:
    """Decode one COBS frame without its 0x00 delimiter. Raises a :class:`ProtocolError`."""
    if len(frame) + 1 > MAX_WIRE_BYTES:
        raise FrameTooLong(f"frame of {len(frame) + 1} bytes exceeds {MAX_WIRE_BYTES}")
    try:
        packet = _cobs.decode(frame)
    except _cobs.DecodeError as exc:
        raise CobsError(f"bad COBS encoding: {exc}") from None
    return decode_packet(packet)


class Decoder:
    """Feed it bytes in any chunks; get back decoded messages and protocol errors in order.

    Frames are split on 0x00. Bytes beyond MAX_WIRE_BYTES without a delimiter are dropped up to
    the next delimiter and reported once as :class:`FrameTooLong`; empty frames (a lone 0x00,
    e.g. line noise or a flush) are ignored. Counters: ``frames`` (good), ``errors`` (by kind),
    ``bytes``.
    """

    def __init__(self, max_wire_bytes: int = MAX_WIRE_BYTES):
        self._buf = bytearray()
        self._max = max_wire_bytes
        self._overflow = False
        self.frames = 0
        self.bytes = 0
        self.errors: dict[str, int] = {}

    def feed(self, data: bytes) -> list[Message | ProtocolError]:
        out: list[Message | ProtocolError] = []
        self.bytes += len(data)
        start = 0
        while True:
            end = data.find(b"\x00", start)
            if end < 0:
                if start < len(data):  # (not after a chunk's last delimiter)
                    self._append(data[start:], out)
                return out
            if not self._buf and not self._overflow and end - start + 1 <= self._max:
                frame = data[start:end]  # a whole frame in this chunk: no copy through _buf
                start = end + 1
                if not frame:
                    continue
            else:
                self._append(data[start:end], out)
                start = end + 1
                if self._overflow:
                    self._overflow = False
                    self._buf.clear()
                    continue
                if not self._buf:
                    continue
                frame = bytes(self._buf)
                self._buf.clear()
            try:
                msg = decode_frame(frame)
            except ProtocolError as err:
                self.errors[err.kind] = self.errors.get(err.kind, 0) + 1
                out.append(err)
            else:
                self.frames += 1
                out.append(msg)

    def _append(self, chunk: bytes, out: list) -> None:
        if self._overflow or not chunk:
            return
        self._buf += chunk
        if len(self._buf) + 1 > self._max:
            self._overflow = True
            self._buf.clear()
            err = FrameTooLong(f"more than {self._max} bytes without a frame delimiter")
            self.errors[err.kind] = self.errors.get(err.kind, 0) + 1
            out.append(err)
