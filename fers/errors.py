"""User-facing errors: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys

EXIT_USAGE = 2


class FersError(Exception):
    """A problem with the user's input (file, folder, option) that the user can fix.

    The message names the file and says what to do; command lines print it on one line
    and exit with code 2.
    """


class ParameterError(FersError, ValueError):
    """A value a library parameter does not accept. The message marks parameter names in backquotes
    (`` `img_size` ``); a command line shows them as its flags (:func:`fers.cli.common.as_flags`)."""


def cli_entry(main):
    """Wrap a command-line ``main(argv)`` so that user errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except FersError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
