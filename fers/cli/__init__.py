"""Command lines. Each ``main(argv)`` is wrapped by :func:`fers.errors.cli_entry`."""
