"""The ``autoscale`` command line: ddo, predict, export, plot.

Tables for people go to stdout; files carry the machine-readable result. Every problem
with user input exits with code 2 and a single ``autoscale: error: ...`` line.
"""

import argparse
import logging
import math
import re
import sys
from typing import Dict, List, Optional, Sequence

from . import __version__
from .errors import InputError

logger = logging.getLogger("autoscale_ds.cli")

EXIT_INPUT_ERROR = 2
_TOKEN_SUFFIXES = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


# ---------------------------------------------------------------- argument helpers


def parse_token_count(text: str) -> float:
    """'10B', '1.5e9', '500M', '2T' -> number of tokens."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r} (try 10B, 500M, 1.5e9)")
    value = float(match.group(1)) * _TOKEN_SUFFIXES[match.group(2).upper()]
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"token count must be positive: {text!r}")
    return value


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
    sys.stderr.write(f"{prog}: error: {message}\n")


# ------------------------------------------------------------------------ parser


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
