"""The one error type an operator ever sees: one line naming what was wrong and where."""

import argparse


class UserError(Exception):
    """A bad input from a person: a config field, a CLI argument, a port or a frame.

    ``str(err)`` is a single line: ``<where>: <field>: <what was expected>, got <value>``.
    The CLI prints it as ``thruster-hil: error: <line>`` and exits with status 2.
    """

    exit_code = 2

    def __init__(self, where: str, message: str, field: str | None = None):
        self.where = where
        self.field = field
        self.message = message
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        # One line, always: a value that contains a line break (any that str.splitlines knows:
        # \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029, not only \n) must not break the contract.
        super().__init__(" ".join(text.splitlines()))


class ConfigError(UserError):
    """A hardware-config file that is missing, unparseable or fails validation."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a one-line :class:`UserError` (``where``: see
    :meth:`where`), not a usage dump; the thruster-hil and emulator command lines use it."""

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # Python 3.11's argparse turns "--opt=--" into an empty list without calling the type
        # or checking the choices (so "--delta-v=--" reached the planner as []): take the
        # "--" as the value, as Python 3.13 does, and let the type and choices judge it.
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)

    def where(self) -> str:
        return "arguments"

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(self.where(), message)
