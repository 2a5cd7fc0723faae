"""The one error type an operator ever sees: one line naming what was wrong and where."""

import argparse
import difflib


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
        raise _ParserError(self, self.where(), message)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, but an option this parser does not know is named first, with the known
        one it is closest to: argparse checks the required arguments before it looks at what
        it could not place, so ``run --dleta-v 0.4`` said that a target was missing."""
        try:
            namespace, extras = super().parse_known_args(args, namespace)
        except _ParserError as err:
            if err.parser is not self:
                raise
            unknown = self._unknown_options(args)
            if not unknown:
                raise
            raise self._unknown_error(unknown) from None
        unknown = [a for a in extras if self._looks_like_option(a)]
        if unknown:
            raise self._unknown_error(unknown)
        return namespace, extras

    def _looks_like_option(self, arg: str) -> bool:
        return len(arg) > 1 and arg[0] in self.prefix_chars and not _is_number(arg)

    def _unknown_options(self, args) -> list[str]:
        """The options in ``args`` this parser does not know, found by parsing them again with
        nothing required (so argparse's own rules decide what is an option, abbreviations
        included); [] if that parse fails too (the first error is then the one to show)."""
        held = [*self._actions, *self._mutually_exclusive_groups]
        required = [obj.required for obj in held]
        try:
            for obj in held:
                obj.required = False
            _, extras = super().parse_known_args(args, argparse.Namespace())
        except UserError:
            return []
        finally:
            for obj, was in zip(held, required, strict=True):
                obj.required = was
        return [a for a in extras if self._looks_like_option(a)]

    def _unknown_error(self, unknown: list[str]) -> UserError:
        # Compared without the dashes, which every option shares; 0.75 takes a swap or a
        # dropped letter (dleta-v, jsno, ou) but not a word with two letters in common (warp, ap).
        options = [o for action in self._actions for o in action.option_strings]
        known = {o.lstrip(self.prefix_chars): o for o in options}
        parts = []
        for arg in unknown:
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(
                name.lstrip(self.prefix_chars), list(known), n=1, cutoff=0.75
            )
            parts.append(f"{name} (did you mean {known[close[0]]}?)" if close else name)
        noun = "option" if len(parts) == 1 else "options"
        return UserError(self.where(), f"unrecognized {noun} {', '.join(parts)}")


class _ParserError(UserError):
    """A usage error, with the parser that raised it (a subcommand's errors pass through the
    main parser's :meth:`OneLineParser.parse_known_args` on their way out)."""

    def __init__(self, parser: OneLineParser, where: str, message: str):
        super().__init__(where, message)
        self.parser = parser


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
