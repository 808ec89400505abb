"""One exception type for every mistake a user can fix.

The CLI prints its message as one line and exits non-zero; notebooks see a normal
exception. Messages say what was wrong and what to do.
"""


class ActdbError(Exception):
    """A user-facing error: bad input, missing weights, a busy store.

    `cli_message`: the same advice in command-line terms (`--weights random:1` where the
    notebook reads `weights='random:1'`); the CLI prints it instead of the message."""

    def __init__(self, message: str, cli_message: str | None = None):
        super().__init__(message)
        self.cli_message = cli_message or message


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C by a writer so that it records where it stopped."""
