"""Write firmware_bridge/golden_vectors.json: good and bad wire frames with what they decode to.

Both the Python codec (tests/test_codec.py) and the board firmware's C parser (issue 5, built on
the host) must agree with every vector. Good frames cover every message with boundary values;
bad frames cover each error class the protocol names. The UDP-only host telemetry
(HOST_CYCLE) never goes on the serial line: tests/test_stream.py covers its packets. Regenerate
only when the dictionary changes (the file records the dictionary hash it was made for):

    python tools/make_golden_vectors.py
"""

from __future__ import annotations

import binascii
import json
from pathlib import Path

from cobs import cobs
from thruster_hil.firmware_bridge.codec import (
    ProtocolError,
    crc16,
    decode_frame,
    encode,
    encode_packet,
)
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    FLAG_ACK_REQ,
    SERIAL_MESSAGES,
    dictionary_hash,
)

OUT = Path(__file__).resolve().parents[1] / "firmware_bridge" / "golden_vectors.json"


def _values(spec, pick):
    """Field values: pick = 'zero', 'max' or 'mid'."""
    out = {}
    for f in spec.fields:
        base = f.type.split("[")[0]
        hi = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF, "u64": 2**64 - 1, "i32": 2**31 - 1}[
            base
        ]
        lo = -(2**31) if base == "i32" else 0
        if pick == "zero":
            v = [0] * f.count
        elif pick == "max":
            v = [hi] * f.count
        else:
            v = [(lo + (hi - lo) // 3 + 7 * i) for i in range(f.count)]
            if base == "i32":
                v = [-123456 + i for i in range(f.count)]
        out[f.name] = v if f.count > 1 else v[0]
    return out


def good_vectors():
    vectors = []
    seqs = {"zero": 0, "max": 16383, "mid": 4242}
    for name, spec in SERIAL_MESSAGES.items():  # (UDP-only messages are never framed)
        for pick in ("zero", "max", "mid"):
            fields = _values(spec, pick)
            flags = FLAG_ACK_REQ if pick == "mid" else 0
            wire = encode(name, seqs[pick], flags, **fields)
            vectors.append(
                {
                    "id": f"{name}-{pick}",
                    "wire": wire.hex(),
                    "message": name,
                    "seq": seqs[pick],
                    "flags": flags,
                    "fields": {k: list(v) if isinstance(v, list) else v for k, v in fields.items()},
                }
            )
    return vectors


def _frame(packet: bytes) -> str:
    return (cobs.encode(packet) + b"\x00").hex()


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def bad_vectors():
    fire = encode_packet(
        "FIRE", 9, 0, session=1, step=2, valid_for_ms=500, bank=0, mask=1, on_ticks=[100] + [0] * 15
    )
    hb = encode_packet("HEARTBEAT", 3, 0, session=1, host_step=5)
    cases = []

    def add(case_id, wire_hex, error):
        cases.append({"id": case_id, "wire": wire_hex, "error": error})

    flipped = bytearray(fire)
    flipped[12] ^= 0x01
    add("crc-bit-flip-in-payload", _frame(bytes(flipped)), "crc")
    bad_crc = bytearray(hb)
    bad_crc[-1] ^= 0xFF
    add("crc-wrong-trailer", _frame(bytes(bad_crc)), "crc")
    add("length-short-packet", _frame(hb[:8]), "length")
    add("length-header-disagrees", _frame(_with_crc(hb[:4] + b"\x00\x20" + hb[6:-2])), "length")
    add(
        "length-truncated-payload",
        _frame(_with_crc(bytes([hb[0], hb[1], hb[2], hb[3], 0, len(hb) - 2 - 7 - 1]) + hb[6:-3])),
        "length",
    )
    add("header-version-1", _frame(_with_crc(bytes([hb[0] | 0x20]) + hb[1:-2])), "header")
    add(
        "header-no-secondary", _frame(_with_crc(bytes([hb[0] & ~0x08 & 0xFF]) + hb[1:-2])), "header"
    )
    add("header-segmented", _frame(_with_crc(hb[:2] + bytes([hb[2] & 0x3F]) + hb[3:-2])), "header")
    add("header-msg-version-2", _frame(_with_crc(hb[:7] + bytes([0x20]) + hb[8:-2])), "header")
    add("header-wrong-apid", _frame(_with_crc(bytes([hb[0], 0x11]) + hb[2:-2])), "header")
    add("header-tc-as-tm", _frame(_with_crc(bytes([hb[0] & ~0x10 & 0xFF]) + hb[1:-2])), "header")
    add("unknown-message-id", _frame(_with_crc(hb[:6] + b"\x55" + hb[7:-2])), "unknown_id")
    add("cobs-zero-inside", (b"\x05\x01\x00").hex(), "cobs")
    add("cobs-code-overruns", (b"\x09\x01\x02\x00").hex(), "cobs")
    add("too-long", ("01" * 80) + "00", "too_long")
    return cases


def main() -> None:
    good = good_vectors()
    bad = bad_vectors()
    for v in bad:
        frame = bytes.fromhex(v["wire"])[:-1]
        try:
            decode_frame(frame)
        except ProtocolError as err:
            assert err.kind == v["error"], (v["id"], err.kind)
        else:
            raise AssertionError(f"{v['id']} decoded")
    doc = {
        "dictionary_hash": f"0x{DICT_HASH:08X}",
        "crc_check": {
            "input": "123456789",
            "crc16_ccitt_false": "0x29B1",
            # the dictionary hash's CRC (docs/protocol.md section 3), and the hash of a one-key
            # dictionary {"a": 1} (canonical JSON {"a":1}) for a client to test its hashing
            "crc32_iso_hdlc": f"0x{binascii.crc32(b'123456789'):08X}",
            "dict_hash_of_a_eq_1": f"0x{dictionary_hash({'a': 1}):08X}",
        },
        "good": good,
        "bad": bad,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(good)} good and {len(bad)} bad vectors to {OUT}")


if __name__ == "__main__":
    main()
