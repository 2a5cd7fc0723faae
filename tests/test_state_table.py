"""The unit's state table is declared once (messages.toml) and everything else follows it.

Drift: the firmware's board/states.h and the docs/protocol.md section 5 table are regenerated
from the declaration and compared; the conformance matrix is derived from it; a malformed table
fails at import with one line naming the cell. (tests/test_unit_core.py exercises every declared
transition on UnitCore; the conformance suite checks the matrix on the emulator and on QEMU.)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from thruster_hil.firmware_bridge import conformance, dictionary, statetable
from thruster_hil.firmware_bridge.dictionary import RESULT, STATE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gen_c_header  # noqa: E402


def test_states_header_is_generated_from_the_table():
    assert (
        ROOT / "firmware_bridge" / "board" / "states.h"
    ).read_text() == gen_c_header.render_states(), (
        "states.h is stale: run python tools/gen_c_header.py"
    )


def test_protocol_md_table_is_generated_from_the_table():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert doc == gen_c_header.render_protocol_doc(doc), (
        "docs/protocol.md section 5 is stale: run python tools/gen_c_header.py"
    )
    assert doc.index(gen_c_header.TABLE_START) < doc.index("## 6. FIRE")


def test_every_output_is_current():
    assert gen_c_header.main(["--check"]) == 0


def test_the_table_is_in_the_dictionary_hash():
    raw = copy.deepcopy(dictionary.RAW)
    raw["on_command"]["FIRE"]["SAFE"] = "BAD_MODE"
    assert dictionary.dictionary_hash(raw) != dictionary.DICT_HASH


def test_rendered_cells_follow_the_declaration():
    """A changed row changes the header and the doc (so a stale one fails the tests above)."""
    cell = statetable.COMMANDS["SET_PARAM"][STATE["ARMING"]]
    assert cell.kind == "refuse" and cell.refusal == RESULT["REJECTED_STATE"]
    header = gen_c_header.render_states()
    assert (
        "/* SET_PARAM */ {CELL_NONE, ACT_SET_PARAM, CELL_REFUSE | RESULT_REJECTED_STATE," in header
    )
    assert (
        "| SET_PARAM | - | `set_param`: ACCEPTED, BAD_PARAM: stay | REJECTED_STATE |"
        in gen_c_header.render_state_table()
    )


def test_conformance_matrix_is_the_table():
    for state, row in conformance._MATRIX.items():
        for cmd, (_, result, after) in row.items():
            cell = statetable.COMMANDS[cmd][STATE[state]]
            if cell.kind == "refuse":
                assert RESULT[result] == cell.refusal and after == state
            else:
                want = RESULT[result] if result else RESULT["ACCEPTED"]
                assert STATE[after] in cell.next_states(want)


@pytest.mark.parametrize(
    "path,value,message",
    [
        (("on_command", "FIRE", "SAFE"), "NOT_A_RESULT", "on_command.FIRE.SAFE"),
        (
            ("on_command", "FIRE", "ARMED"),
            {"action": "nope", "ACCEPTED": "ARMED"},
            "on_command.FIRE.ARMED",
        ),
        (
            ("on_command", "HELLO", "SAFE"),
            {"action": "hello", "ACCEPTED": "LIMBO"},
            "on_command.HELLO.SAFE.ACCEPTED",
        ),
        (
            ("on_event", "WATCHDOG", "ARMED"),
            {"action": "watchdog_trip", "ACCEPTED": "SAFE"},
            "on_event.WATCHDOG.ARMED",
        ),
        (("on_event", "WATCHDOG", "ARMED"), "REJECTED_STATE", "on_event.WATCHDOG.ARMED"),
    ],
)
def test_a_malformed_cell_is_named(path, value, message):
    raw = copy.deepcopy(dictionary.RAW)
    raw[path[0]][path[1]][path[2]] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        statetable._load(raw)


def test_a_missing_state_or_command_is_named():
    raw = copy.deepcopy(dictionary.RAW)
    del raw["on_command"]["PING"]["FAULT"]
    with pytest.raises(ValueError, match=r"on_command\.PING: expected one cell per state"):
        statetable._load(raw)
    raw = copy.deepcopy(dictionary.RAW)
    del raw["on_command"]["PING"]
    with pytest.raises(ValueError, match="without an \\[on_command\\] table: \\['PING'\\]"):
        statetable._load(raw)
