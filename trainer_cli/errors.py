"""The one exception type the CLI turns into a clean message and a non-zero exit code."""

from __future__ import annotations


class CLIError(Exception):
    """A problem the user can fix; ``str(exc)`` is the message shown, without a traceback.

    ``exit_code`` follows the usual convention: 2 for bad command-line input or files, 1 for a
    failure while running.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
