"""The message dictionary as XTCE 1.2, for ground systems (Yamcs, OpenC3 COSMOS, XTCE decoders).

XTCE (OMG XTCE 1.2, CCSDS 660.1-B-2) is the exchange format ground systems import a mission's
packets from. :func:`xtce_bytes` writes messages.toml as one ``SpaceSystem``; nothing here is
written by hand, so the export cannot drift from the codec:

- **Telemetry** (``TelemetryMetaData``): an abstract ``CCSDSPacket`` container with the CCSDS
  primary header and our secondary header (msg_id, msg_ver, flags), and one container per
  message, *both directions*, each selected by APID and msg_id, ending in the CRC. The host's
  commands are there too, so a decoder reads the uplink half of a capture (a bench's wire log,
  a command echo) with the same definition: a decoder that reads only telemetry (space-packet-
  parser) gets every packet of the wire.
- **Telecommands** (``CommandMetaData``): an abstract ``CCSDSCommand`` whose container lays out
  the headers (the constant bits as fixed values), and one ``MetaCommand`` per host command with
  its arguments; APID, msg_id and data length are assigned per command, the sequence count,
  the flags and the CRC are left to the ground system's command post-processor.
- Units (``UnitSet``), enumerations (``EnumeratedParameterType``/``EnumeratedArgumentType``),
  the dictionary's min/max (``ValidRange``, ``ValidRangeSet``), docs (``LongDescription``).
- The CRC: a 16-bit parameter whose ``IntegerDataEncoding`` carries ``ErrorDetectCorrect/CRC``
  (width 16, polynomial 0x1021, init 0xFFFF, final XOR 0, no reflection, from the start of the
  packet): XTCE's own description of CRC-16/CCITT-FALSE.

What XTCE does not describe is the serial framing (COBS with a 0x00 delimiter,
docs/protocol.md section 1): it frames bytes on a link, below the packets XTCE describes, so it
is stated in the SpaceSystem's ``AncillaryDataSet`` and a ground system removes it in its link
layer (or takes the packets unframed, one per UDP datagram). Array fields (``u16[16]``) are
written as one parameter per element (``VALVE_REPORT_executed_ticks_0`` ..): space-packet-parser
cannot read ``ArrayParameterType``, and every element keeps its own name in a display.

Only the standard library's ElementTree: the document is a tree of plain elements, and its
output is byte-for-byte the same for the same dictionary.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from thruster_hil.firmware_bridge.codec import MSG_VERSION
from thruster_hil.firmware_bridge.dictionary import (
    _RANGES,
    APIDS,
    DICT_HASH,
    ENUMS,
    FLAGS,
    MAX_WIRE_BYTES,
    MESSAGES,
    OVERHEAD_BYTES,
    PROTO_VERSION,
    RAW,
    TICK_US,
    Field,
    MessageSpec,
)

XTCE_NS = "http://www.omg.org/spec/XTCE/20180204"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{XTCE_NS} https://www.omg.org/spec/XTCE/20180204/SpaceSystem.xsd"
SPACE_SYSTEM = "ThrusterHIL"
#: The abstract root container (space-packet-parser's default root name) and command.
ROOT_CONTAINER = "CCSDSPacket"
ROOT_COMMAND = "CCSDSCommand"
ROOT_COMMAND_CONTAINER = "CCSDSCommandContainer"
CRC_PARAMETER = "CRC"

_BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64, "i32": 32}
_UNITS = {
    "ms": "millisecond",
    "us": "microsecond",
    "kPa": "kilopascal",
    "tick": f"valve timer tick of {TICK_US} us",
}
#: The primary and secondary header: (name, bits, doc). The TC/TM type and msg_id are
#: enumerations; the rest plain unsigned integers.
_HEADER = (
    ("CCSDS_VERSION", 3, "CCSDS packet version number: 0"),
    ("CCSDS_TYPE", 1, "packet type: 1 = TC (host to unit), 0 = TM (unit to host)"),
    ("CCSDS_SEC_HDR_FLAG", 1, "secondary header flag: 1 (msg_id, msg_ver, flags follow)"),
    ("CCSDS_APID", 11, "application process identifier"),
    ("CCSDS_SEQ_FLAGS", 2, "sequence flags: 3 (unsegmented)"),
    ("CCSDS_SEQ_COUNT", 14, "sequence count, one per APID and sender; kept on a retransmission"),
    ("CCSDS_LENGTH", 16, "packet data length: bytes after the primary header (CRC included) - 1"),
    ("MSG_ID", 8, "message id (the messages of firmware_bridge/messages.toml)"),
    ("MSG_VER", 4, f"message version: {MSG_VERSION}"),
    (
        "FLAGS",
        4,
        "frame flags: "
        + ", ".join(f"{name} {bit}" for name, bit in FLAGS.items())
        + ", bit 3 reserved (sent 0)",
    ),
)
#: Header bits that are the same in every command: (name, bits, value).
_FIXED_IN_COMMANDS = {
    "CCSDS_VERSION": 0,
    "CCSDS_TYPE": 1,
    "CCSDS_SEC_HDR_FLAG": 1,
    "CCSDS_SEQ_FLAGS": 3,
    "MSG_VER": MSG_VERSION,
}
#: Commands whose execution moves valves or arms them: marked critical for a ground system.
_CRITICAL = ("ARM_REQUEST", "ARM_CONFIRM", "FIRE", "FAULT_INJECT")


def _el(parent: ET.Element | None, tag: str, /, **attrs: str) -> ET.Element:
    """An XTCE element (attributes in the order given, all as strings)."""
    name = f"{{{XTCE_NS}}}{tag}"
    if parent is None:
        return ET.Element(name, attrs)
    return ET.SubElement(parent, name, attrs)


def _describe(parent: ET.Element, text: str) -> None:
    if text:
        _el(parent, "LongDescription").text = text


def parameter_name(spec: MessageSpec, field: Field, index: int | None = None) -> str:
    """The XTCE parameter of one message field (of one element of an array field): names are
    global in a SpaceSystem, so the message name goes in front."""
    base = f"{spec.name}_{field.name}"
    return base if index is None else f"{base}_{index}"


def _elements(field: Field) -> list[int | None]:
    """None for a scalar; the element indices of an array field."""
    return [None] if field.count == 1 else list(range(field.count))


def _base(field: Field) -> str:
    return field.type.split("[")[0]


def _encoding(parent: ET.Element, bits: int, signed: bool) -> ET.Element:
    return _el(
        parent,
        "IntegerDataEncoding",
        sizeInBits=str(bits),
        encoding="twosComplement" if signed else "unsigned",
    )


def _units(parent: ET.Element, unit: str) -> None:
    if unit:
        units = _el(parent, "UnitSet")
        _el(units, "Unit", description=_UNITS.get(unit, unit)).text = unit


def _has_range(field: Field) -> bool:
    """Whether the dictionary narrows the field below what its type holds (its min/max)."""
    return (field.lo, field.hi) != _RANGES[_base(field)]


def _integer_type(
    parent: ET.Element, name: str, bits: int, signed: bool, field: Field | None, argument: bool
) -> None:
    """An IntegerParameterType or IntegerArgumentType: units, encoding, valid range."""
    tag = "IntegerArgumentType" if argument else "IntegerParameterType"
    t = _el(parent, tag, name=name, sizeInBits=str(bits), signed="true" if signed else "false")
    if field is not None:
        _describe(t, field.doc)
        _units(t, field.unit)
    _encoding(t, bits, signed)
    if field is not None and _has_range(field):
        rng = {"minInclusive": str(field.lo), "maxInclusive": str(field.hi)}
        if argument:
            _el(_el(t, "ValidRangeSet"), "ValidRange", **rng)
        else:
            _el(t, "ValidRange", **rng)


def _enum_type(
    parent: ET.Element, name: str, bits: int, labels: dict[str, int], doc: str, argument: bool
) -> None:
    tag = "EnumeratedArgumentType" if argument else "EnumeratedParameterType"
    t = _el(parent, tag, name=name)
    _describe(t, doc)
    _encoding(t, bits, False)
    enum_list = _el(t, "EnumerationList")
    for label, value in sorted(labels.items(), key=lambda kv: kv[1]):
        _el(enum_list, "Enumeration", value=str(value), label=label)


def _crc_type(parent: ET.Element, name: str, argument: bool) -> None:
    """The CRC-16/CCITT-FALSE field as XTCE describes a CRC: ErrorDetectCorrect/CRC on its
    encoding, over the packet from its start up to the CRC itself."""
    tag = "IntegerArgumentType" if argument else "IntegerParameterType"
    t = _el(parent, tag, name=name, sizeInBits="16", signed="false")
    _describe(
        t,
        f"{RAW['protocol']['crc']} (poly 0x1021, init 0xFFFF, no reflection, xorout 0; "
        '"123456789" -> 0x29B1) over the packet from its first byte to the end of the payload, '
        "big-endian",
    )
    enc = _encoding(t, 16, False)
    crc = _el(
        _el(enc, "ErrorDetectCorrect"),
        "CRC",
        width="16",
        reflectData="false",
        reflectRemainder="false",
        bitsFromReference="0",
        reference="start",
    )
    _el(crc, "Polynomial").text = "1021"
    _el(crc, "InitRemainder").text = "FFFF"
    _el(crc, "FinalXOR").text = "0000"


def _enum_type_name(field: Field, argument: bool) -> str:
    return f"{field.enum}_{_base(field)}_{'ArgType' if argument else 'Type'}"


def _field_type_name(spec: MessageSpec, field: Field, argument: bool) -> str:
    if field.enum:
        return _enum_type_name(field, argument)
    return f"{spec.name}_{field.name}_{'ArgType' if argument else 'Type'}"


def _field_types(parent: ET.Element, argument: bool) -> None:
    """The types of every message field (for arguments: of the commands' fields)."""
    enums_done: set[str] = set()
    for spec in MESSAGES.values():
        if argument and not spec.is_command:
            continue
        for f in spec.fields:
            name = _field_type_name(spec, f, argument)
            if f.enum:
                if name not in enums_done:
                    enums_done.add(name)
                    _enum_type(
                        parent, name, _BITS[_base(f)], ENUMS[f.enum], f"enum {f.enum}", argument
                    )
                continue
            _integer_type(parent, name, _BITS[_base(f)], _base(f) == "i32", f, argument)


def _message_ids() -> dict[str, int]:
    return {spec.name: spec.id for spec in MESSAGES.values()}


def _header_types(parent: ET.Element, argument: bool) -> None:
    suffix = "ArgType" if argument else "Type"
    for name, bits, doc in _HEADER:
        if argument and name in _FIXED_IN_COMMANDS:
            continue
        if name == "MSG_ID" and not argument:
            _enum_type(parent, f"MSG_ID_{suffix}", bits, _message_ids(), doc, argument)
        elif name == "CCSDS_TYPE":
            _enum_type(parent, f"CCSDS_TYPE_{suffix}", bits, {"TM": 0, "TC": 1}, doc, argument)
        else:
            t = _el(
                parent,
                "IntegerArgumentType" if argument else "IntegerParameterType",
                name=f"{name}_{suffix}",
                sizeInBits=str(bits),
                signed="false",
            )
            _describe(t, doc)
            _encoding(t, bits, False)
    _crc_type(parent, f"CRC_{suffix}", argument)


def _telemetry(root: ET.Element) -> None:
    tm = _el(root, "TelemetryMetaData")
    types = _el(tm, "ParameterTypeSet")
    _header_types(types, argument=False)
    _field_types(types, argument=False)

    params = _el(tm, "ParameterSet")
    for name, _bits, _doc in _HEADER:
        _el(params, "Parameter", name=name, parameterTypeRef=f"{name}_Type")
    _el(params, "Parameter", name=CRC_PARAMETER, parameterTypeRef="CRC_Type")
    for spec in MESSAGES.values():
        for f in spec.fields:
            for i in _elements(f):
                p = _el(
                    params,
                    "Parameter",
                    name=parameter_name(spec, f, i),
                    parameterTypeRef=_field_type_name(spec, f, False),
                )
                if i is not None:
                    _describe(p, f"{spec.name}.{f.name}[{i}]" + (f": {f.doc}" if f.doc else ""))

    containers = _el(tm, "ContainerSet")
    header = _el(containers, "SequenceContainer", name=ROOT_CONTAINER, abstract="true")
    _describe(header, "CCSDS space packet primary header (6 bytes) and secondary header (2)")
    entries = _el(header, "EntryList")
    for name, _bits, _doc in _HEADER:
        _el(entries, "ParameterRefEntry", parameterRef=name)
    for spec in MESSAGES.values():
        c = _el(containers, "SequenceContainer", name=spec.name)
        _describe(c, _message_doc(spec))
        entries = _el(c, "EntryList")
        for f in spec.fields:
            for i in _elements(f):
                _el(entries, "ParameterRefEntry", parameterRef=parameter_name(spec, f, i))
        _el(entries, "ParameterRefEntry", parameterRef=CRC_PARAMETER)
        base = _el(c, "BaseContainer", containerRef=ROOT_CONTAINER)
        comparisons = _el(_el(base, "RestrictionCriteria"), "ComparisonList")
        _el(comparisons, "Comparison", parameterRef="CCSDS_APID", value=str(spec.apid))
        _el(comparisons, "Comparison", parameterRef="MSG_ID", value=spec.name)


def _message_doc(spec: MessageSpec) -> str:
    size = OVERHEAD_BYTES + spec.payload_len
    way = "TC, host to unit" if spec.is_command else "TM, unit to host"
    return f"{spec.doc} ({way}; APID 0x{spec.apid:03X}, msg_id 0x{spec.id:02X}, {size} bytes)"


def _commands(root: ET.Element) -> None:
    cm = _el(root, "CommandMetaData")
    types = _el(cm, "ArgumentTypeSet")
    _header_types(types, argument=True)
    _field_types(types, argument=True)

    metas = _el(cm, "MetaCommandSet")
    base = _el(metas, "MetaCommand", name=ROOT_COMMAND, abstract="true")
    _describe(
        base,
        "The headers of every host command. The ground system fills CCSDS_SEQ_COUNT (one count "
        "per APID, kept on a retransmission), FLAGS (ACK_REQ for an acknowledgement) and CRC "
        "(its ErrorDetectCorrect) as it sends the command",
    )
    args = _el(base, "ArgumentList")
    initial = {"CCSDS_SEQ_COUNT": "0", "FLAGS": "0", CRC_PARAMETER: "0"}
    for name, _bits, _doc in _HEADER:
        if name not in _FIXED_IN_COMMANDS:
            _el(
                args,
                "Argument",
                name=name,
                argumentTypeRef=f"{name}_ArgType",
                **_initial(initial, name),
            )
    _el(args, "Argument", name=CRC_PARAMETER, argumentTypeRef="CRC_ArgType", initialValue="0")
    container = _el(base, "CommandContainer", name=ROOT_COMMAND_CONTAINER)
    entries = _el(container, "EntryList")
    for name, bits, _doc in _HEADER:
        if name in _FIXED_IN_COMMANDS:
            value = _FIXED_IN_COMMANDS[name]
            _el(
                entries,
                "FixedValueEntry",
                name=name,
                binaryValue=f"{value:02X}",
                sizeInBits=str(bits),
            )
        else:
            _el(entries, "ArgumentRefEntry", argumentRef=name)

    for spec in MESSAGES.values():
        if not spec.is_command:
            continue
        mc = _el(metas, "MetaCommand", name=spec.name)
        _describe(mc, _message_doc(spec))
        assign = _el(
            _el(mc, "BaseMetaCommand", metaCommandRef=ROOT_COMMAND), "ArgumentAssignmentList"
        )
        for arg, value in (
            ("CCSDS_APID", spec.apid),
            ("CCSDS_LENGTH", OVERHEAD_BYTES + spec.payload_len - 7),
            ("MSG_ID", spec.id),
        ):
            _el(assign, "ArgumentAssignment", argumentName=arg, argumentValue=str(value))
        if spec.fields:
            args = _el(mc, "ArgumentList")
            for f in spec.fields:
                for i in _elements(f):
                    a = _el(
                        args,
                        "Argument",
                        name=f.name if i is None else f"{f.name}_{i}",
                        argumentTypeRef=_field_type_name(spec, f, True),
                    )
                    if f.doc and i is None:
                        _describe(a, f.doc)
        container = _el(mc, "CommandContainer", name=f"{spec.name}_Command")
        entries = _el(container, "EntryList")
        for f in spec.fields:
            for i in _elements(f):
                name = f.name if i is None else f"{f.name}_{i}"
                _el(entries, "ArgumentRefEntry", argumentRef=name)
        _el(entries, "ArgumentRefEntry", argumentRef=CRC_PARAMETER)
        _el(container, "BaseContainer", containerRef=ROOT_COMMAND_CONTAINER)
        if spec.name in _CRITICAL:
            _el(
                mc,
                "DefaultSignificance",
                consequenceLevel="critical",
                reasonForWarning="arms the unit or moves valves",
            )


def _initial(initial: dict[str, str], name: str) -> dict[str, str]:
    return {"initialValue": initial[name]} if name in initial else {}


def _ancillary(root: ET.Element) -> None:
    """What a ground system must know that XTCE has no element for: the serial framing."""
    data = _el(root, "AncillaryDataSet")
    for name, text in (
        (
            "framing",
            "On the serial line every packet travels as COBS(packet) followed by one 0x00 "
            f"delimiter, at most {MAX_WIRE_BYTES} bytes with the delimiter "
            "(docs/protocol.md section 1): remove it before decoding. A UDP stream of the "
            "same packets carries them unframed, one per datagram.",
        ),
        ("byte_order", "big-endian, most significant bit first"),
        ("dictionary_hash", f"0x{DICT_HASH:08X}"),
        ("protocol_version", str(PROTO_VERSION)),
        (
            "apids",
            ", ".join(f"{name} 0x{apid:03X}" for name, apid in APIDS.items()),
        ),
    ):
        _el(data, "AncillaryData", name=name).text = text


def xtce_document() -> ET.ElementTree:
    """The dictionary as an XTCE 1.2 document (one SpaceSystem)."""
    ET.register_namespace("", XTCE_NS)
    ET.register_namespace("xsi", XSI_NS)
    root = _el(None, "SpaceSystem", name=SPACE_SYSTEM)
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA_LOCATION)
    _describe(
        root,
        "thruster-hil propulsion-unit wire, exported from firmware_bridge/messages.toml "
        "(thruster-hil dictionary --xtce): CCSDS space packets with a 2-byte secondary header "
        "and a CRC-16/CCITT-FALSE trailer; docs/protocol.md is the specification",
    )
    _ancillary(root)
    header = _el(
        root,
        "Header",
        version=f"protocol {PROTO_VERSION}, dictionary 0x{DICT_HASH:08X}",
        validationStatus="Working",
    )
    notes = _el(header, "NoteSet")
    _el(
        notes, "Note"
    ).text = "Generated from the dictionary; a unit whose dictionary hash differs is never armed."
    _telemetry(root)
    _commands(root)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def xtce_bytes() -> bytes:
    """The XTCE document as UTF-8 XML with its declaration, ending in a newline."""
    return ET.tostring(xtce_document().getroot(), encoding="utf-8", xml_declaration=True) + b"\n"
