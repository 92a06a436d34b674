"""The exception type for mistakes a user can fix."""


class FrbError(Exception):
    """A user-facing error: bad input, missing data or weights.

    The message is one line that names the bad value and the fix. The CLI
    prints it without a traceback and exits with status 2.
    """
