"""The message dictionary (messages.toml) as Python: message specs, enums, limits and its hash.

Loaded once at import. Each message gets a precompiled ``struct.Struct`` for its payload, so
encoding and decoding are one ``pack``/``unpack`` call. The dictionary hash is the CRC-32 of the
canonical JSON of the whole file (sorted keys, no whitespace): any change to any id, field, type,
limit or enum changes it, and a unit that reports another hash is never armed.
"""

from __future__ import annotations

import binascii
import json
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path

DICTIONARY_PATH = Path(__file__).resolve().parent / "messages.toml"

_SCALARS = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i32": "i"}
_RANGES = {
    "u8": (0, 0xFF),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFFFFFF),
    "u64": (0, 0xFFFFFFFFFFFFFFFF),
    "i32": (-(2**31), 2**31 - 1),
}

#: Primary header (6) + secondary header (2) + CRC (2).
OVERHEAD_BYTES = 10


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # u8 u16 u32 u64 i32 or u16[N]
    count: int  # 1 for scalars
    lo: int
    hi: int
    unit: str = ""
    enum: str = ""
    doc: str = ""


@dataclass(frozen=True)
class MessageSpec:
    name: str
    id: int
    apid: int
    is_command: bool  # TC (host -> unit) or TM
    fields: tuple[Field, ...]
    struct: struct.Struct
    doc: str
    #: Streamed to a ground system over UDP only (``link = "udp"``), never on the serial line:
    #: not bound by max_wire_bytes, not in the board's C header.
    udp_only: bool = False

    @property
    def payload_len(self) -> int:
        return self.struct.size


def _field(raw: dict, where: str) -> Field:
    ftype = raw["type"]
    count = 1
    base = ftype
    if "[" in ftype:
        base, rest = ftype.split("[", 1)
        count = int(rest.rstrip("]"))
    if base not in _SCALARS:
        raise ValueError(f"{where}: unknown field type {ftype!r}")
    lo, hi = _RANGES[base]
    return Field(
        name=raw["name"],
        type=ftype,
        count=count,
        lo=int(raw.get("min", lo)),
        hi=int(raw.get("max", hi)),
        unit=raw.get("unit", ""),
        enum=raw.get("enum", ""),
        doc=raw.get("doc", ""),
    )


def dictionary_hash(raw: dict) -> int:
    """The hash of a parsed dictionary: CRC-32/ISO-HDLC (zlib's; "123456789" -> 0xCBF43926) of
    its canonical JSON (keys sorted, separators "," and ":", non-ASCII as \\uXXXX)."""
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    return binascii.crc32(canonical) & 0xFFFFFFFF


def _load(path: Path):
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    dict_hash = dictionary_hash(raw)
    apids = raw["apids"]
    specs: dict[str, MessageSpec] = {}
    for name, m in raw["messages"].items():
        fields = tuple(_field(f, f"messages.{name}") for f in m["fields"])
        fmt = ">" + "".join(
            f"{f.count if f.count > 1 else ''}{_SCALARS[f.type.split('[')[0]]}" for f in fields
        )
        apid = apids[m["apid"]]
        spec = MessageSpec(
            name=name,
            id=m["id"],
            apid=apid,
            is_command=m["apid"] == "host_command",
            fields=fields,
            struct=struct.Struct(fmt),
            doc=m.get("doc", ""),
            udp_only=m.get("link", "serial") == "udp",
        )
        if m.get("link", "serial") not in ("serial", "udp"):
            raise ValueError(f"messages.{name}: link must be 'serial' or 'udp'")
        wire_max = OVERHEAD_BYTES + spec.payload_len + 2  # + COBS code byte + delimiter
        if wire_max > raw["protocol"]["max_wire_bytes"] and not spec.udp_only:
            raise ValueError(
                f"messages.{name}: {wire_max} B on the wire exceeds "
                f"{raw['protocol']['max_wire_bytes']} B"
            )
        specs[name] = spec
    return raw, specs, dict_hash


RAW, MESSAGES, DICT_HASH = _load(DICTIONARY_PATH)
PROTO_VERSION: int = RAW["protocol"]["version"]
MAX_WIRE_BYTES: int = RAW["protocol"]["max_wire_bytes"]
CHANNELS_PER_BANK: int = RAW["protocol"]["channels_per_bank"]
TICK_US: int = RAW["protocol"]["tick_us"]
APIDS: dict[str, int] = dict(RAW["apids"])
FLAGS: dict[str, int] = dict(RAW["flags"])
LIMITS: dict[str, int] = dict(RAW["limits"])
ENUMS: dict[str, dict[str, int]] = {k: dict(v) for k, v in RAW["enums"].items()}
BY_ID: dict[int, MessageSpec] = {s.id: s for s in MESSAGES.values()}
#: The messages of the serial wire (host <-> unit): all but the UDP-only host telemetry.
SERIAL_MESSAGES: dict[str, MessageSpec] = {n: s for n, s in MESSAGES.items() if not s.udp_only}

# Convenience constants used across the bridge.
FLAG_ACK_REQ = FLAGS["ACK_REQ"]
FLAG_RETRANSMIT = FLAGS["RETRANSMIT"]
FLAG_TEST_BUILD = FLAGS["TEST_BUILD"]
MODE = ENUMS["mode"]
STATE = ENUMS["state"]
RESULT = ENUMS["result"]
EVENT = ENUMS["event"]
FAULT = ENUMS["fault"]
STATE_NAMES = {v: k for k, v in STATE.items()}
RESULT_NAMES = {v: k for k, v in RESULT.items()}
EVENT_NAMES = {v: k for k, v in EVENT.items()}
