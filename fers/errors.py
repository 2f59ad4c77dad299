"""User-facing errors: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import functools
import logging
import re
import sys

EXIT_USAGE = 2


class FersError(Exception):
    """A problem with the user's input (file, folder, option) that the user can fix.

    The message names the file and says what to do; command lines print it on one line
    and exit with code 2. ``parameters``: the library parameters the message names (e.g.
    ``band_policy``); a command line shows them as its flags (:meth:`for_command_line`).
    """

    def __init__(self, message: str = "", parameters: tuple = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)

    def for_command_line(self, flags: dict) -> str:
        """The message with each named parameter replaced by its flag in ``flags`` (whole words, not
        inside paths)."""
        message = str(self)
        for name in self.parameters:
            if name in flags:
                message = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/])", flags[name], message)
        return message


class _Console(logging.Handler):
    """Records of the ``fers`` logger as plain lines on the current ``sys.stdout``: what the library
    logs (notes, warnings) reads on a command's console as it always did."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout)
        except Exception:  # logging must never stop a run
            self.handleError(record)


def console_logging() -> None:
    """Show the ``fers`` logger's INFO and above on stdout (once per process; every command does this)."""
    logger = logging.getLogger("fers")
    if not any(isinstance(handler, _Console) for handler in logger.handlers):
        logger.addHandler(_Console())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def cli_entry(main):
    """Wrap a command-line ``main(argv)`` so that user errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        console_logging()
        try:
            return main(argv)
        except FersError as error:
            from .cli import PARAMETER_FLAGS

            print(f"error: {error.for_command_line(PARAMETER_FLAGS)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
