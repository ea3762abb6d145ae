"""The ``autoscale`` command line: the parser and the entry point. Each sub-command is a
module of this package (prepare, pipeline, ddo-run, ddo, predict, export, plot, mix).

Tables for people go to stdout; files carry the machine-readable result. Every problem
with user input exits with code 2 and a single ``autoscale: error: ...`` line.
"""

import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..console import emit_error
from ..errors import EXIT_INPUT_ERROR, InputError

logger = logging.getLogger("autoscale_ds.cli")


# ------------------------------------------------------------------------ parser


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """A bad flag is an input error like any other: one ``autoscale: error:`` line, exit 2
    (argparse's own is a usage block, then ``autoscale SUBCOMMAND: error:``)."""

    def error(self, message):
        command = self.prog.partition(" ")[2]
        emit_error("autoscale", f"{command + ': ' if command else ''}{message} "
                   f"(see `{self.prog} --help`)")
        sys.exit(EXIT_INPUT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autoscale", formatter_class=_Formatter,
        description="Compute-optimal data mixtures for LLM pretraining (AutoScale / DDO).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_all(commands, _Formatter)
    return parser


def _register_all(commands, formatter) -> None:
    from . import ddo, export, mix, pipeline, plot, predict, prepare

    for register in (prepare.register, pipeline.register_pipeline, pipeline.register_ddo_run,
                     ddo.register, predict.register, export.register, plot.register, mix.register):
        register(commands, formatter)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except InputError as exc:
        emit_error("autoscale", str(exc))
        return EXIT_INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
