"""User-facing errors: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings

EXIT_USAGE = 2


class FersError(Exception):
    """A problem with the user's input (file, folder, option) that the user can fix.

    The message names the file and says what to do; command lines print it on one line and exit
    with code 2. Library messages mark parameter names in backquotes (`` `band_policy` ``); a
    command line shows its flags instead (:func:`as_flags`).
    """


class ParameterError(FersError, ValueError):
    """A value a library parameter does not accept (the message names the parameter)."""


# Library parameters → the flag a command line shows, when it is not ``--<name>``.
PARAMETER_FLAGS: dict[str, str] = {"channels": "--input_channel", "layout": "--cube_layout"}
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def as_flags(text: str) -> str:
    """``text`` with every `` `parameter` `` replaced by its command-line flag."""
    return _PARAMETER.sub(lambda m: PARAMETER_FLAGS.get(m.group(1), f"--{m.group(1)}"), text)


class ConsoleHandler(logging.Handler):
    """The ``fers`` logger as the commands print it: the message alone (parameters as flags) on
    stdout; warnings on stderr after ``warning:``; beside tqdm's progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = as_flags(self.format(record))
            if record.levelno >= logging.WARNING:
                _write(f"warning: {message}", sys.stderr)  # the streams of now (tests swap them)
            else:
                _write(message, sys.stdout)
        except Exception:  # logging must never stop a run
            self.handleError(record)


def _write(line: str, stream) -> None:
    if "tqdm" in sys.modules:  # keep an active progress bar intact
        sys.modules["tqdm"].tqdm.write(line, file=stream)
    else:
        print(line, file=stream)


def console_logging() -> None:
    """Show the ``fers`` logger's INFO and above as :class:`ConsoleHandler` does (once per process;
    every command does this)."""
    logger = logging.getLogger("fers")
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(ConsoleHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning as the commands print one: ``warning: <message>`` (parameters as flags).
    Installed as ``warnings.formatwarning``, so a context that records warnings (pytest's) still does."""
    return f"warning: {as_flags(str(message))}\n"


def cli_entry(main):
    """Wrap a command-line ``main(argv)`` so that user errors print one line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        from . import profiling

        profiling.start_command(f"{main.__module__}.{main.__name__}")
        console_logging()
        formatted_before, warnings.formatwarning = warnings.formatwarning, _format_warning
        try:
            return main(argv)
        except FersError as error:
            print(f"error: {as_flags(str(error))}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            warnings.formatwarning = formatted_before
            profiling.finish_command()

    return wrapper


def run_command(main) -> None:
    """Run a command's ``main()`` as the script's whole work and end the process with its exit code,
    without tearing the interpreter down: after ``import torch`` the teardown (freeing every module)
    takes 0.5–1.5 s of a command's wall time, for nothing. The ``atexit`` handlers still run and the
    output streams are flushed; with other (non-daemon) threads alive it exits normally."""
    try:
        code = main()
    except SystemExit as exit_info:
        code = exit_info.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    import atexit
    import threading

    if any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
           if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
