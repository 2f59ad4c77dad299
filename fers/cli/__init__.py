"""Command lines. Each ``main(argv)`` is wrapped by :func:`fers.errors.cli_entry`."""

# Library parameters named in FersError messages → the flags the command lines show instead
# (see fers.errors.FersError.for_command_line). Kept here, free of imports, so that printing an
# error loads nothing heavy.
PARAMETER_FLAGS = {
    "band_policy": "--band_policy",
}
