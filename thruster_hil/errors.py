"""The one error type an operator ever sees: one line naming what was wrong and where."""


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
