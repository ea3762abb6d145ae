"""Error types shared by the whole package.

Every problem caused by what a user handed us (a file, a flag, a config value) is an
``InputError``: the CLI turns it into one line on stderr and exit code 2. Anything else
escaping the CLI is a bug in this package.

The exit codes below are shared by every entry point (``autoscale``, ``ddo-run``, the
trainer): the orchestrators read them to tell a rejected input from a crash.
"""

EXIT_INPUT_ERROR = 2
"""Bad input: a file, flag or setting was rejected before any work started."""

EXIT_RUN_FAILED = 3
"""The run started, failed (NaN loss, divergence) and its failure was recorded."""


class InputError(ValueError):
    """A user-supplied file, flag or value is invalid; the message says what to change."""


class InfeasibleError(InputError):
    """The constraints (budget, bounds, floors, caps) admit no solution."""
