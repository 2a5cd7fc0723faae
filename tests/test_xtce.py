"""The XTCE export (issue 16, deliverable 1): `thruster-hil dictionary --xtce FILE`.

A real ground decoder must read our packets from it: space-packet-parser (LASP's XTCE-driven
CCSDS decoder) decodes every packet of a recorded run's capture, and one packet of every message
type in both directions (drawn by hypothesis, for the messages a run does not send), to the same
field values as our codec. The telecommand half (MetaCommands, which space-packet-parser does not
read) is checked by laying out each command from its XTCE definition as a ground system does and
comparing the bytes with our codec's. The document is validated against the XTCE 1.2 schema that
space-packet-parser ships (space_packet_parser/xtce/schemas/SpaceSystem.xsd), with its
validate_xtce (lxml), offline.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import hypothesis.strategies as st
import pytest
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from thruster_hil.firmware_bridge import xtce
from thruster_hil.firmware_bridge.codec import SEQ_MODULO, crc16, decode_packet, encode_packet
from thruster_hil.firmware_bridge.dictionary import DICT_HASH, ENUMS, MESSAGES, Field, MessageSpec

from thruster_hil.cli import main

NS = {"x": xtce.XTCE_NS}
GOLDEN = Path(__file__).resolve().parents[1] / "firmware_bridge" / "golden_vectors.json"
HEADER = (
    "CCSDS_VERSION",
    "CCSDS_TYPE",
    "CCSDS_SEC_HDR_FLAG",
    "CCSDS_APID",
    "CCSDS_SEQ_FLAGS",
    "CCSDS_SEQ_COUNT",
    "CCSDS_LENGTH",
    "MSG_ID",
    "MSG_VER",
    "FLAGS",
)


@functools.cache
def _document() -> ET.Element:
    return ET.fromstring(xtce.xtce_bytes())


@functools.cache
def _definition():
    """space-packet-parser's definition from the export (a missing package fails under CI)."""
    spp = pytest.importorskip("space_packet_parser")
    return spp.XtcePacketDefinition.from_xtce(io.BytesIO(xtce.xtce_bytes()))


def _parse(definition, packet: bytes) -> dict:
    with warnings.catch_warnings():
        # space-packet-parser only warns when a container's bits and the packet's length differ
        warnings.simplefilter("error")
        return definition.parse_bytes(packet)


def _names(spec: MessageSpec, f: Field) -> list[str]:
    if f.count == 1:
        return [xtce.parameter_name(spec, f)]
    return [xtce.parameter_name(spec, f, i) for i in range(f.count)]


def _assert_decodes_alike(definition, packet: bytes) -> str:
    """space-packet-parser's reading of one packet (COBS removed) is our codec's, field for
    field, header and CRC included, and nothing more; returns the message name."""
    ours = decode_packet(packet)
    spec = MESSAGES[ours.name]
    got = _parse(definition, packet)
    assert got["MSG_ID"] == ours.name and got["MSG_ID"].raw_value == spec.id
    assert got["CCSDS_TYPE"] == ("TC" if spec.is_command else "TM")
    assert (got["CCSDS_VERSION"], got["CCSDS_SEC_HDR_FLAG"], got["CCSDS_SEQ_FLAGS"]) == (0, 1, 3)
    assert got["CCSDS_APID"] == spec.apid
    assert got["CCSDS_SEQ_COUNT"] == ours.seq
    assert got["CCSDS_LENGTH"] == len(packet) - 7
    assert got["MSG_VER"] == 1
    assert got["FLAGS"] == ours.flags
    assert got["CRC"] == int.from_bytes(packet[-2:], "big") == crc16(packet[:-2])
    expected = set(HEADER) | {"CRC"}
    for f in spec.fields:
        names = _names(spec, f)
        expected |= set(names)
        if f.count > 1:
            assert tuple(got[n] for n in names) == ours[f.name], f.name
        elif f.enum:
            value = got[names[0]]
            assert value.raw_value == ours[f.name], f.name
            assert ENUMS[f.enum][str(value)] == ours[f.name], f.name  # its label names it
        else:
            assert got[names[0]] == ours[f.name], f.name
    assert set(got) == expected
    return ours.name


def _values(f: Field):
    if f.enum:
        one = st.sampled_from(sorted(ENUMS[f.enum].values()))
    else:
        one = st.integers(f.lo, f.hi)
    return st.tuples(*[one] * f.count) if f.count > 1 else one


def _fields(spec: MessageSpec):
    return st.fixed_dictionaries({f.name: _values(f) for f in spec.fields})


# ---- space-packet-parser reads every message type, both directions ---------------------------


@pytest.mark.parametrize("name", sorted(MESSAGES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_space_packet_parser_decodes_every_message_type_as_our_codec(name, data):
    """Every message of the dictionary, commands and telemetry alike (FAULT_INJECT, STOP_ALL,
    SET_PARAM, DISARM ... that a normal run never sends too): encoded by our codec with any
    valid field values, sequence count and flags, decoded by space-packet-parser."""
    spec = MESSAGES[name]
    fields = data.draw(_fields(spec))
    seq = data.draw(st.integers(0, SEQ_MODULO - 1))
    flags = data.draw(st.integers(0, 15))
    packet = encode_packet(name, seq, flags, **fields)
    assert _assert_decodes_alike(_definition(), packet) == name


def test_the_golden_vectors_decode_alike_and_an_unknown_enum_value_is_refused():
    """The golden frames (firmware_bridge/golden_vectors.json: every message at zero, max and
    mid values) decode alike; a value outside its enumeration (HELLO mode 255) is no label, and
    space-packet-parser refuses the packet rather than show a number (our codec decodes it and
    the unit answers BAD_MODE)."""
    definition = _definition()
    decoded = refused = 0
    for vector in json.loads(GOLDEN.read_text())["good"]:
        packet = cobs.decode(bytes.fromhex(vector["wire"])[:-1])
        spec = MESSAGES[vector["message"]]
        in_enums = all(
            vector["fields"][f.name] in ENUMS[f.enum].values() for f in spec.fields if f.enum
        )
        if in_enums:
            _assert_decodes_alike(definition, packet)
            decoded += 1
        else:
            with pytest.raises(ValueError, match="enum"):
                _parse(definition, packet)
            refused += 1
    assert decoded >= len(MESSAGES) and refused > 0


@pytest.mark.slow  # flies a burn through the emulator (compiles the fused loop once)
def test_space_packet_parser_decodes_every_packet_of_a_recorded_run(tmp_path, capsys):
    """A run's capture.csv holds every byte both ways; every frame in it, COBS removed, decodes
    through the exported file exactly as through our codec: 100 % of the packets."""
    run = tmp_path / "run"
    argv = ["run", "--stack", "progress", "--delta-v", "0.05", "--out", str(run)]
    # 0, or 1 when a starved host let the unit's link watchdog end the burn: either way the
    # capture holds the whole conversation, STOP_ALL included
    assert main(argv) in (0, 1)
    path = tmp_path / "thruster-hil.xtce.xml"
    assert main(["dictionary", "--xtce", str(path)]) == 0
    capsys.readouterr()
    spp = pytest.importorskip("space_packet_parser")
    definition = spp.XtcePacketDefinition.from_xtce(path)

    streams = {"tx": bytearray(), "rx": bytearray()}
    lines = (run / "capture.csv").read_text().splitlines()
    assert lines[0] == "t_ns,dir,hex"
    for line in lines[1:]:
        _t, direction, hex_text = line.split(",")
        streams[direction] += bytes.fromhex(hex_text)
    seen: Counter = Counter()
    report_steps = set()
    for direction, data in streams.items():
        assert data.endswith(b"\x00")  # a whole conversation: no frame cut off
        for frame in bytes(data).split(b"\x00"):
            if frame:  # (the lone 0x00 the host sends before HELLO)
                packet = cobs.decode(frame)
                name = _assert_decodes_alike(definition, packet)
                seen[direction, name] += 1
                if name == "VALVE_REPORT":
                    report_steps.add(decode_packet(packet)["step"])
    tx = {name for d, name in seen if d == "tx"}
    rx = {name for d, name in seen if d == "rx"}
    assert all(MESSAGES[n].is_command for n in tx) and not any(MESSAGES[n].is_command for n in rx)
    assert {"HELLO", "PING", "ARM_REQUEST", "ARM_CONFIRM", "FIRE", "STOP_ALL"} <= tx
    assert {"HELLO_ACK", "PONG", "ARM_CHALLENGE", "VALVE_REPORT", "ACK"} <= rx
    summary = json.loads((run / "summary.json").read_text())
    assert len(report_steps) == summary["cycles"]  # progress: one bank (a resend repeats one)


# ---- the telecommands: MetaCommands lay out our bytes ----------------------------------------


def _crc_from_xtce(crc: ET.Element, data: bytes) -> int:
    """A CRC computed only from what the XTCE CRC element says (width, polynomial, initial
    remainder, final XOR, no reflection): MSB-first long division."""
    assert crc.get("reflectData") == crc.get("reflectRemainder") == "false"
    width = int(crc.get("width"))
    poly = int(crc.find("x:Polynomial", NS).text, 16)
    reg = int(crc.find("x:InitRemainder", NS).text, 16)
    top, mask = 1 << (width - 1), (1 << width) - 1
    for byte in data:
        reg ^= byte << (width - 8)
        for _ in range(8):
            reg = ((reg << 1) ^ poly if reg & top else reg << 1) & mask
    return reg ^ int(crc.find("x:FinalXOR", NS).text, 16)


def _command_from_xtce(name: str, fields: dict, seq: int, flags: int) -> bytes:
    """A command laid out as a ground system lays it out from the XTCE: the base MetaCommand's
    container, then the command's own entries, each argument from the command's assignments,
    the operator's values, or what a ground system fills in (sequence count, flags, the CRC
    by its ErrorDetectCorrect)."""
    doc = _document()
    cmd_meta = doc.find("x:CommandMetaData", NS)
    metas = {m.get("name"): m for m in cmd_meta.iterfind("x:MetaCommandSet/x:MetaCommand", NS)}
    types = {t.get("name"): t for t in cmd_meta.find("x:ArgumentTypeSet", NS)}
    command = metas[name]
    base = metas[command.find("x:BaseMetaCommand", NS).get("metaCommandRef")]
    assert base.get("abstract") == "true"
    values = {
        a.get("argumentName"): int(a.get("argumentValue"))
        for a in command.iterfind("x:BaseMetaCommand/x:ArgumentAssignmentList/*", NS)
    }
    values |= {"CCSDS_SEQ_COUNT": seq, "FLAGS": flags}
    for key, value in fields.items():
        if isinstance(value, tuple):
            values |= {f"{key}_{i}": v for i, v in enumerate(value)}
        else:
            values[key] = value
    arg_types = {
        a.get("name"): types[a.get("argumentTypeRef")]
        for m in (base, command)
        for a in m.iterfind("x:ArgumentList/x:Argument", NS)
    }
    word, nbits, crc = 0, 0, None
    for m in (base, command):
        for entry in m.find("x:CommandContainer/x:EntryList", NS):
            tag = entry.tag.rpartition("}")[2]
            if tag == "FixedValueEntry":
                size, value = int(entry.get("sizeInBits")), int(entry.get("binaryValue"), 16)
            else:
                assert tag == "ArgumentRefEntry", tag
                arg = entry.get("argumentRef")
                enc = arg_types[arg].find("x:IntegerDataEncoding", NS)
                size = int(enc.get("sizeInBits"))
                crc = enc.find("x:ErrorDetectCorrect/x:CRC", NS)
                value = 0 if crc is not None else values.pop(arg)
                if enc.get("encoding") == "twosComplement":
                    value &= (1 << size) - 1
            assert 0 <= value < 1 << size, (name, entry.attrib)
            word, nbits = word << size | value, nbits + size
    assert not values, f"arguments the command does not lay out: {values}"
    assert nbits % 8 == 0 and crc is not None  # the CRC is the last entry
    body = word.to_bytes(nbits // 8, "big")[:-2]
    return body + _crc_from_xtce(crc, body).to_bytes(2, "big")


@pytest.mark.parametrize("name", sorted(n for n, s in MESSAGES.items() if s.is_command))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_every_metacommand_lays_out_our_codecs_bytes(name, data):
    spec = MESSAGES[name]
    fields = data.draw(_fields(spec))
    seq = data.draw(st.integers(0, SEQ_MODULO - 1))
    flags = data.draw(st.integers(0, 15))
    assert _command_from_xtce(name, fields, seq, flags) == encode_packet(name, seq, flags, **fields)


def test_the_crc_element_describes_crc16_ccitt_false():
    """The XTCE CRC (the one construct a ground system checks the packet with) computes the
    catalogue check value of CRC-16/CCITT-FALSE, and so our CRC; a wrong polynomial would not."""
    for crc in _document().iterfind(".//x:ErrorDetectCorrect/x:CRC", NS):
        assert _crc_from_xtce(crc, b"123456789") == 0x29B1
        assert crc.get("reference") == "start" and crc.get("bitsFromReference") == "0"
    wrong = ET.fromstring(ET.tostring(crc))
    wrong.find("x:Polynomial", NS).text = "8005"
    assert _crc_from_xtce(wrong, b"123456789") != 0x29B1


# ---- what the document says ------------------------------------------------------------------


def _types(section: str) -> dict[str, ET.Element]:
    tag = "ParameterTypeSet" if section == "TelemetryMetaData" else "ArgumentTypeSet"
    return {t.get("name"): t for t in _document().find(f"x:{section}/x:{tag}", NS)}


def test_units_enumerations_and_valid_ranges_come_from_the_dictionary():
    doc = _document()
    tm_types = _types("TelemetryMetaData")
    params = {
        p.get("name"): tm_types[p.get("parameterTypeRef")]
        for p in doc.iterfind("x:TelemetryMetaData/x:ParameterSet/x:Parameter", NS)
    }
    checked = Counter()
    for spec in MESSAGES.values():
        for f in spec.fields:
            for pname in _names(spec, f):
                t = params[pname]
                unit = t.find("x:UnitSet/x:Unit", NS)
                assert (unit.text if unit is not None else "") == f.unit, pname
                enc = t.find("x:IntegerDataEncoding", NS)
                assert int(enc.get("sizeInBits")) == int(f.type.split("[")[0][1:]), pname
                if f.enum:
                    labels = {
                        e.get("label"): int(e.get("value"))
                        for e in t.iterfind("x:EnumerationList/x:Enumeration", NS)
                    }
                    assert labels == ENUMS[f.enum], pname
                    checked["enum"] += 1
                rng = t.find("x:ValidRange", NS)
                if rng is not None:
                    assert (int(rng.get("minInclusive")), int(rng.get("maxInclusive"))) == (
                        f.lo,
                        f.hi,
                    )
                    checked["range"] += 1
                checked["unit"] += bool(f.unit)
    assert checked["enum"] >= 10 and checked["unit"] >= 20
    # HELLO.period_ms 10..10000, ARM_CONFIRM.max_on_ticks 1..10000 and next_step >= 1
    assert checked["range"] == 3
    args = _types("CommandMetaData")
    period = args["HELLO_period_ms_ArgType"].find("x:ValidRangeSet/x:ValidRange", NS)
    assert (period.get("minInclusive"), period.get("maxInclusive")) == ("10", "10000")
    assert args["HELLO_period_ms_ArgType"].find("x:UnitSet/x:Unit", NS).text == "ms"


def test_every_message_has_its_container_and_every_command_its_metacommand():
    doc = _document()
    containers = {
        c.get("name"): c for c in doc.iterfind("x:TelemetryMetaData/x:ContainerSet/*", NS)
    }
    assert containers.pop(xtce.ROOT_CONTAINER).get("abstract") == "true"
    assert set(containers) == set(MESSAGES)
    for name, c in containers.items():
        spec = MESSAGES[name]
        rc = {
            cmp.get("parameterRef"): cmp.get("value")
            for cmp in c.iterfind("x:BaseContainer/x:RestrictionCriteria/x:ComparisonList/*", NS)
        }
        assert rc == {"CCSDS_APID": str(spec.apid), "MSG_ID": name}
    metas = {m.get("name") for m in doc.iterfind(".//x:MetaCommand", NS)}
    assert metas == {n for n, s in MESSAGES.items() if s.is_command} | {xtce.ROOT_COMMAND}
    data = {a.get("name"): a.text for a in doc.iterfind("x:AncillaryDataSet/*", NS)}
    assert "COBS" in data["framing"] and data["dictionary_hash"] == f"0x{DICT_HASH:08X}"
    assert f"0x{DICT_HASH:08X}" in doc.find("x:Header", NS).get("version")


def test_the_export_is_the_same_bytes_every_time():
    assert xtce.xtce_bytes() == xtce.xtce_bytes()


# ---- the XTCE 1.2 schema ---------------------------------------------------------------------


def _validate(tmp_path: Path, text: str):
    """space-packet-parser's validation of a document: the XTCE 1.2 schema (OMG SpaceSystem.xsd,
    namespace .../XTCE/20180204) that the package ships, resolved from the document's
    xsi:schemaLocation without a download and applied with lxml, and its own structural rules
    (every reference resolves)."""
    spp = pytest.importorskip("space_packet_parser")
    path = tmp_path / "doc.xml"
    path.write_text(text, encoding="utf-8")
    kwargs = {"allow_schema_download": False, "print_results": False, "raise_on_error": False}
    schema = spp.validate_xtce(path, level="schema", **kwargs)
    structure = spp.validate_xtce(path, level="structure", **kwargs)
    assert schema.schema_location == xtce.SCHEMA_LOCATION.split()[1]
    # space-packet-parser's structural rules know only SequenceContainers: a MetaCommand's
    # CommandContainer based on the abstract command's is reported as a missing reference
    others = [
        e
        for e in structure.errors
        if not (
            e.error_code == "MISSING_CONTAINER_REFERENCE"
            and f"'{xtce.ROOT_COMMAND_CONTAINER}'" in e.message
        )
    ]
    return schema.errors, others


def test_the_export_is_valid_xtce_1_2(tmp_path):
    schema_errors, structure_errors = _validate(tmp_path, xtce.xtce_bytes().decode())
    assert not schema_errors, "\n".join(map(str, schema_errors[:3]))
    assert not structure_errors, "\n".join(map(str, structure_errors[:3]))


def test_the_schema_check_catches_a_broken_document(tmp_path):
    """The validation can fail: a name XTCE forbids ('.'), a container whose base comes before
    its entries, and a reference to a parameter that is not there are all reported."""
    text = xtce.xtce_bytes().decode()
    assert _validate(tmp_path, text.replace('name="HELLO"', 'name="HELLO.v1"', 1))[0]
    doc = ET.fromstring(text)
    hello = doc.find("x:TelemetryMetaData/x:ContainerSet/x:SequenceContainer[@name='HELLO']", NS)
    base = hello.find("x:BaseContainer", NS)
    hello.remove(base)
    hello.insert(0, base)
    assert _validate(tmp_path, ET.tostring(doc, encoding="unicode"))[0]
    missing = text.replace('parameterRef="HELLO_mode"', 'parameterRef="HELLO_mood"', 1)
    assert _validate(tmp_path, missing)[1]


# ---- the command line ------------------------------------------------------------------------


def test_dictionary_xtce_writes_the_export(tmp_path, capsys):
    path = tmp_path / "thruster-hil.xml"
    assert main(["dictionary", "--xtce", str(path)]) == 0
    assert path.read_bytes() == xtce.xtce_bytes()
    assert str(path) in capsys.readouterr().out


def test_dictionary_xtce_dash_writes_standard_output(capsysbinary):
    assert main(["dictionary", "--xtce", "-"]) == 0
    assert capsysbinary.readouterr().out == xtce.xtce_bytes()


def test_dictionary_alone_lists_the_messages(capsys):
    assert main(["dictionary"]) == 0
    out = capsys.readouterr().out
    assert f"0x{DICT_HASH:08X}" in out
    assert all(f" {name} " in out for name in MESSAGES)


@pytest.mark.parametrize("where", ["directory", "missing-parent", "nul"])
def test_an_unwritable_xtce_file_is_one_line_and_exit_2(tmp_path, capsys, where):
    path = {
        "directory": str(tmp_path),
        "missing-parent": str(tmp_path / "no" / "such" / "x.xml"),
        "nul": str(tmp_path / "a\0b.xml"),
    }[where]
    assert main(["dictionary", "--xtce", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and "XTCE" in err
    assert err.count("\n") == 1 and "Traceback" not in err
