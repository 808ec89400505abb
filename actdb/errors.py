"""One exception type for every mistake a user can fix.

The CLI prints its message as one line and exits non-zero; notebooks see a normal
exception. Messages say what was wrong and what to do.
"""


class ActdbError(Exception):
    """A user-facing error: bad input, missing weights, a busy store."""
