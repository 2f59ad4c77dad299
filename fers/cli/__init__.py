"""Command lines. Each ``main(argv)`` is wrapped by :func:`fers.errors.cli_entry`."""

from ..tuning import configure_openmp

configure_openmp()  # before torch loads: OpenMP threads wait passively (fers.tuning)
