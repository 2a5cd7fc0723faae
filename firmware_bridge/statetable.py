"""The unit's state table (messages.toml ``[on_command.*]``, ``[on_event.*]``, ``[actions]``).

Declared once, with the message dictionary (so it is in the dictionary hash), and read here at
import. Every input (a command the unit receives, or an event it notices itself) has one cell per
state, which is one of three kinds:

- ``none``: the input does nothing in this state;
- ``refuse``: a command the table refuses: ACK with ``refusal``, no action, the state stays;
- ``action``: ``action`` runs and ends in one of ``outcomes`` (result code -> the states it may
  leave the unit in; an event has the one outcome ``ACCEPTED``).

UnitCore dispatches by :data:`COMMANDS` / :data:`EVENTS`, tools/gen_c_header.py writes the
firmware's ``board/states.h`` and the docs/protocol.md table from the same objects, and the tests
derive their state x input expectations from them. A malformed table is a ``ValueError`` naming
the cell at import.
"""

from __future__ import annotations

from dataclasses import dataclass

from thruster_hil.firmware_bridge.dictionary import MESSAGES, RAW, RESULT, STATE

#: States in the order of their enum values (the table's columns).
STATE_ORDER: tuple[str, ...] = tuple(sorted(STATE, key=STATE.__getitem__))
ACCEPTED = RESULT["ACCEPTED"]


@dataclass(frozen=True)
class Cell:
    """One state x one input."""

    input: str
    state: int
    kind: str  # "none", "refuse" or "action"
    action: str = ""
    refusal: int = 0  # kind "refuse": the result the ACK carries
    outcomes: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (result, possible next states)

    def next_states(self, result: int = ACCEPTED) -> tuple[int, ...]:
        """The states the unit may be in after this cell ends in ``result``."""
        if self.kind != "action":
            return (self.state,)
        return dict(self.outcomes)[result]

    def next(self, result: int = ACCEPTED) -> int:
        """The state after ``result`` (the first, if the cell lists several)."""
        return self.next_states(result)[0]

    @property
    def results(self) -> tuple[int, ...]:
        return tuple(r for r, _ in self.outcomes)


def _state(name: object, where: str) -> int:
    if name not in STATE:
        raise ValueError(
            f"messages.toml: {where}: expected a state ({', '.join(STATE_ORDER)}), got {name!r}"
        )
    return STATE[name]


def _cell(
    raw: object, input_name: str, state: int, where: str, is_event: bool, actions: dict
) -> Cell:
    if raw == "-":
        return Cell(input_name, state, "none")
    if isinstance(raw, str):
        if is_event or raw not in RESULT or raw == "ACCEPTED":
            raise ValueError(
                f'messages.toml: {where}: expected "-", a refusal result or '
                f"{{ action = ... }}, got {raw!r}"
            )
        return Cell(input_name, state, "refuse", refusal=RESULT[raw])
    if not isinstance(raw, dict) or raw.get("action") not in actions:
        raise ValueError(f"messages.toml: {where}: expected an action of [actions], got {raw!r}")
    rest = {k: v for k, v in raw.items() if k != "action"}
    if is_event:
        if set(rest) != {"next"}:
            raise ValueError(
                f"messages.toml: {where}: an event cell has action and next only, "
                f"got {sorted(rest)}"
            )
        rest = {"ACCEPTED": rest["next"]}
    outcomes = []
    for result, nxt in rest.items():
        if result not in RESULT:
            raise ValueError(f"messages.toml: {where}.{result}: not a result of [enums.result]")
        names = nxt if isinstance(nxt, list) else [nxt]
        if not names:
            raise ValueError(f"messages.toml: {where}.{result}: no state")
        outcomes.append((RESULT[result], tuple(_state(n, f"{where}.{result}") for n in names)))
    return Cell(input_name, state, "action", action=raw["action"], outcomes=tuple(outcomes))


def _load(raw: dict):
    actions = dict(raw.get("actions", {}))
    tables = {}
    docs = {}
    for section, is_event in (("on_command", False), ("on_event", True)):
        for name, row in raw.get(section, {}).items():
            where = f"{section}.{name}"
            if not is_event and not (name in MESSAGES and MESSAGES[name].is_command):
                raise ValueError(f"messages.toml: {where}: not a command of the dictionary")
            missing = [s for s in STATE_ORDER if s not in row]
            extra = sorted(set(row) - set(STATE_ORDER) - {"doc"})
            if missing or extra:
                raise ValueError(
                    f"messages.toml: {where}: expected one cell per state "
                    f"({', '.join(STATE_ORDER)}), missing {missing}, extra {extra}"
                )
            docs[name] = row.get("doc", name)
            tables[(section, name)] = {
                STATE[s]: _cell(row[s], name, STATE[s], f"{where}.{s}", is_event, actions)
                for s in STATE_ORDER
            }
    commands = {n: t for (sec, n), t in tables.items() if sec == "on_command"}
    events = {n: t for (sec, n), t in tables.items() if sec == "on_event"}
    untabled = sorted(n for n, m in MESSAGES.items() if m.is_command and n not in commands)
    if untabled:
        raise ValueError(f"messages.toml: commands without an [on_command] table: {untabled}")
    used = {c.action for t in tables.values() for c in t.values() if c.kind == "action"}
    if used != set(actions):
        raise ValueError(
            f"messages.toml: [actions] and the cells disagree: unused "
            f"{sorted(set(actions) - used)}, undeclared {sorted(used - set(actions))}"
        )
    # Commands in message-id order, then events in file order: the firmware's input numbers.
    commands = dict(sorted(commands.items(), key=lambda kv: MESSAGES[kv[0]].id))
    return commands, events, actions, docs


COMMANDS: dict[str, dict[int, Cell]]
EVENTS: dict[str, dict[int, Cell]]
COMMANDS, EVENTS, ACTIONS, DOCS = _load(RAW)
#: Every input, commands first: the firmware numbers them in this order (IN_<name>).
INPUTS: dict[str, dict[int, Cell]] = {**COMMANDS, **EVENTS}


def cells() -> list[Cell]:
    """Every cell, input by input, state by state."""
    return [c for row in INPUTS.values() for c in row.values()]


def states_where(event: str) -> frozenset[int]:
    """The states in which ``event`` does something (its timer runs, it changes the state)."""
    return frozenset(s for s, c in EVENTS[event].items() if c.kind != "none")


def hears_commands(state: int) -> bool:
    """Whether the unit handles commands in ``state`` at all (not in BOOT)."""
    return any(row[state].kind != "none" for row in COMMANDS.values())
