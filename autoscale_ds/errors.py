"""Error types shared by the whole package.

Every problem caused by what a user handed us (a file, a flag, a config value) is an
``InputError``: the CLI turns it into one line on stderr and exit code 2. Anything else
escaping the CLI is a bug in this package.
"""


class InputError(ValueError):
    """A user-supplied file, flag or value is invalid; the message says what to change."""


class InfeasibleError(InputError):
    """The constraints (budget, bounds, floors, caps) admit no solution."""
