"""Argument helpers shared by every entry point (``autoscale``, ``train``, ``ddo-run``):
token counts with suffixes, ``DOMAIN=VALUE`` pairs, checked numbers, and the one-line output
and error conventions. A leaf module: it imports nothing of the package but its errors.
"""

import argparse
import math
import re
import sys
from decimal import Context, Decimal, localcontext
from typing import Dict, List, Optional

from .errors import InputError

_TOKEN_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
MAX_TOKEN_COUNT = 10**300
"""Largest count accepted: the predictions' arithmetic is in floats (max ~1.8e308)."""


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
