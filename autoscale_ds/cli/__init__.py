"""The top layer: the ``autoscale`` command. Nothing below it (data, train, orchestrate,
method, formats) imports it; the entry-point conventions they share (exit codes, one-line
errors, token counts) live in :mod:`autoscale_ds.errors` and :mod:`autoscale_ds.console`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
