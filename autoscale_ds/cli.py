"""The ``autoscale`` command line: ddo, predict, export, plot.

Tables for people go to stdout; files carry the machine-readable result. Every problem
with user input exits with code 2 and a single ``autoscale: error: ...`` line.
"""

import argparse
import logging
import math
import re
import sys
from decimal import Context, Decimal, localcontext
from typing import Dict, List, Optional, Sequence

from . import __version__
from .errors import InputError

logger = logging.getLogger("autoscale_ds.cli")

EXIT_INPUT_ERROR = 2
_TOKEN_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
MAX_TOKEN_COUNT = 10**300
"""Largest count accepted: the predictions' arithmetic is in floats (max ~1.8e308)."""


# ---------------------------------------------------------------- argument helpers


def parse_token_count(text: str) -> float:
    """'10B', '1.5e9', '500M', '2T' -> number of tokens: an exact ``int`` when whole (so
    '1e20' is exactly 10**20, which no float is), else a float. argparse ``type=``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r} (try 10B, 500M, 1.5e9)")
    mantissa = Decimal(match.group(1))
    if mantissa.adjusted() > 400:  # don't build a huge int just to refuse it
        raise argparse.ArgumentTypeError(f"token count too large: {text!r} (at most 1e300)")
    with localcontext(Context(prec=1000)):  # exact: the default 28 digits would round
        value = mantissa * _TOKEN_SUFFIXES[match.group(2).upper()]
    if not value > 0:
        raise argparse.ArgumentTypeError(f"token count must be positive: {text!r}")
    if value > MAX_TOKEN_COUNT:
        raise argparse.ArgumentTypeError(f"token count too large: {text!r} (at most 1e300)")
    return int(value) if value == value.to_integral_value() else float(value)


def token_count_of(text: str, flag: str) -> float:
    """:func:`parse_token_count` for a value inside another argument (e.g. DOMAIN=TOKENS):
    a bad one is an InputError naming ``flag``."""
    try:
        return parse_token_count(text)
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{flag}: {exc}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _domain_values(pairs: Optional[List[str]], flag: str, default_key: Optional[str] = None):
    """['web=0.1', 'code=0.2'] -> {'web': 0.1, 'code': 0.2}; a bare '0.1' goes to default_key."""
    result: Dict[str, str] = {}
    for pair in pairs or []:
        if "=" in pair:
            key, _, value = pair.partition("=")
        elif default_key is not None:
            key, value = default_key, pair
        else:
            raise InputError(f"{flag} expects DOMAIN=VALUE, got {pair!r}")
        if not key:
            raise InputError(f"{flag} expects DOMAIN=VALUE, got {pair!r}")
        if key in result:  # like a duplicate key in a file: which one was meant?
            raise InputError(f"{flag} gives {key!r} twice ({result[key]} and {value})")
        result[key] = value
    return result


def _float_of(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{flag}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{flag}: not a finite number: {text!r}")
    return value


def emit(text: str = "") -> None:
    """A line of human-readable command output (stdout); logs go to stderr."""
    sys.stdout.write(f"{text}\n")


def emit_error(prog: str, message: str) -> None:
    """The one line an input problem produces (stderr)."""
    one_line = " ".join(str(message).split("\n"))  # a message must never span lines
    sys.stderr.write(f"{prog}: error: {one_line}\n")


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
    from .commands import register_all

    register_all(commands, _Formatter)
    return parser


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
