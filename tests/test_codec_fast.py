"""The codec's per-message packers and builders (firmware_bridge/codec.py, written out from the
message dictionary at import) against the plain reading of the dictionary: same bytes, same
fields, and every value the packer cannot take goes to the slow path, which accepts what it can
(bool, a whole float) or names the field. Requirement: docs/protocol.md section 2 (one definition
of the wire; encode and decode are its only implementation)."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import MESSAGES, MessageSpec

NAMES = sorted(MESSAGES)


def reference_packet(spec: MessageSpec, seq: int, flags: int, fields: dict) -> bytes:
    """The packet as the dictionary describes it, field by field (no precompiled packer)."""
    values: list[int] = []
    for f in spec.fields:
        v = fields[f.name]
        values.extend(v if f.count > 1 else [v])
    payload = spec.struct.pack(*values)
    word0 = (1 << 12 if spec.is_command else 0) | (1 << 11) | spec.apid
    head = struct.pack(
        ">HHHBB", word0, 0xC000 | seq % codec.SEQ_MODULO, len(payload) + 3, spec.id, 0x10 | flags
    )
    body = head + payload
    return body + struct.pack(">H", codec.crc16(body))


def field_values(spec: MessageSpec, draw) -> dict:
    out = {}
    for f, code in zip(spec.fields, _codes(spec), strict=True):
        bits = 8 * struct.calcsize(">" + code)
        if code.islower():  # a signed field (b, h, i, q)
            ints = st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        else:
            ints = st.integers(0, (1 << bits) - 1)
        out[f.name] = tuple(draw(ints) for _ in range(f.count)) if f.count > 1 else draw(ints)
    return out


def _codes(spec: MessageSpec) -> list[str]:
    """Each field's struct code (a repeat count, e.g. 16H, expanded)."""
    fmt = spec.struct.format.lstrip("<>!=@")
    each = [c for n, c in re.findall(r"(\d*)([a-zA-Z?])", fmt) for _ in range(int(n or 1))]
    codes, i = [], 0
    for f in spec.fields:
        codes.append(each[i])
        i += f.count
    return codes


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_message_packs_and_unpacks_as_the_dictionary_says(data):
    name = data.draw(st.sampled_from(NAMES))
    spec = MESSAGES[name]
    fields = field_values(spec, data.draw)
    seq = data.draw(st.integers(0, 3 * codec.SEQ_MODULO))
    flags = data.draw(st.integers(0, 15))
    packet = codec.encode_packet(name, seq, flags, **fields)
    assert packet == reference_packet(spec, seq, flags, fields)
    msg = codec.decode_packet(packet)
    assert (msg.name, msg.seq, msg.flags) == (name, seq % codec.SEQ_MODULO, flags)
    assert msg.fields == fields
    assert list(msg.fields) == [f.name for f in spec.fields]  # in field order
    assert msg == codec.Message(name, seq % codec.SEQ_MODULO, fields, flags)


def fire_fields(**changes) -> dict:
    fields = dict(session=7, step=3, valid_for_ms=200, bank=0, mask=0xFFFF, on_ticks=[5] * 16)
    fields.update(changes)
    return fields


def test_values_the_packer_refuses_are_taken_by_the_slow_path_when_they_are_whole_numbers():
    plain = codec.encode("FIRE", 1, 0, **fire_fields(step=1))
    assert codec.encode("FIRE", 1, 0, **fire_fields(step=True)) == plain
    assert codec.encode("FIRE", 1, 0, **fire_fields(step=1.0)) == plain
    assert codec.encode("FIRE", 1, 0, **fire_fields(on_ticks=tuple([5] * 16))) == codec.encode(
        "FIRE", 1, 0, **fire_fields()
    )


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(on_ticks=[5] * 15), "on_ticks: expected 16 values, got 15"),
        (dict(on_ticks=[5] * 17), "on_ticks: expected 16 values, got 17"),
        (dict(step="x"), "FIRE.step: expected an integer"),
        (dict(mask=1 << 16), "FIRE:"),
        (dict(extra=1), "unknown field(s) ['extra']"),
    ],
)
def test_what_neither_path_can_encode_is_an_encode_error_naming_the_field(changes, words):
    with pytest.raises(codec.EncodeError) as err:
        codec.encode("FIRE", 1, 0, **fire_fields(**changes))
    assert words in str(err.value)


def test_a_missing_field_is_named():
    fields = fire_fields()
    del fields["bank"]
    with pytest.raises(codec.EncodeError, match="missing field 'bank'"):
        codec.encode("FIRE", 1, 0, **fields)


def test_the_decoded_message_is_the_frozen_dataclass_it_always_was():
    msg = codec.decode_frame(codec.encode("FIRE", 9, 2, **fire_fields())[:-1])
    assert type(msg) is codec.Message and msg.spec is MESSAGES["FIRE"]
    assert repr(msg).startswith("Message(name='FIRE', seq=9, fields={'session': 7")
    with pytest.raises(AttributeError):
        msg.seq = 1  # type: ignore[misc]
