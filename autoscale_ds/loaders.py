"""Strict readers for every JSON and YAML file (and ``--set`` value) a user hands us.

Plain ``json.loads`` and ``yaml.safe_load`` keep the last of two equal keys, so a setting
given twice is silently half-ignored; both readers here refuse it instead. The YAML reader
also takes ``1e-3`` as the number it means (YAML 1.1 wants a dot: ``1.0e-3``), and every
parse problem becomes one line ``<what> FILE:LINE:COL: problem`` in an :class:`InputError`.
"""

import json
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml

from .errors import InputError

# YAML 1.2 floats with an exponent and no dot ("1e-3", "5E+8"), which YAML 1.1 reads as strings.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictYAMLLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping and reads ``1e-3`` as a float."""

    def construct_mapping(self, node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            self._reject_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        # Only the mapping's own keys: a "<<" merge may legitimately be overridden.
        first_seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line "
                    f"{first_seen[key].line + 1}); a key may appear once per mapping",
                    key_node.start_mark)
            first_seen[key] = key_node.start_mark


StrictYAMLLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT,
                                       list("-+0123456789."))


class QuotingDumper(yaml.SafeDumper):
    """Writes YAML that the strict reader reads back as written: a string the reader takes
    as a number (a domain or path named ``1e3``) is quoted; other output is unchanged."""

    yaml_implicit_resolvers = {k: list(v) for k, v in StrictYAMLLoader.yaml_implicit_resolvers.items()}


class DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_pairs(pairs: List[Tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"duplicate key {key!r}; a key may appear once per object")
        result[key] = value
    return result


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def loads_json(text: str) -> Any:
    """``json.loads`` refusing duplicate keys and NaN/Infinity (which JSON does not have).
    Raises ``ValueError`` (``json.JSONDecodeError`` for syntax)."""
    return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


def loads_yaml(text: str) -> Any:
    """YAML through :class:`StrictYAMLLoader`; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictYAMLLoader)  # noqa: S506 - a SafeLoader subclass


def json_error_line(exc: ValueError, source: str) -> str:
    """``SOURCE:LINE:COL: problem`` for a syntax error, ``SOURCE: problem`` otherwise."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{source}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
    if isinstance(exc, DuplicateKeyError):
        return f"{source}: {exc}"
    return f"{source}: not valid JSON ({exc})"


def yaml_error_line(exc: yaml.YAMLError, source: str) -> str:
    """One line ``SOURCE:LINE:COL: problem (context)`` (PyYAML's own text spans 4-7 lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return f"{where}: {_yaml_problem(exc)}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        context = f"{context} at line {context_mark.line + 1}"
    text = problem + (f" ({context})" if context else "")
    return " ".join(text.split())  # one line, whatever PyYAML put in


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory, not a file") from None
    except PermissionError:
        raise InputError(f"{what} {path}: permission denied (cannot read it)") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def read_json(path, what: str) -> Any:
    """Parse a JSON file strictly; every I/O or syntax problem is a one-line InputError."""
    text = _read_text(Path(path), what)
    try:
        return loads_json(text)
    except RecursionError:
        raise InputError(f"{what} {path}: nested too deeply") from None
    except ValueError as exc:
        raise InputError(f"{what} {json_error_line(exc, str(path))}") from None


def read_yaml(path, what: str) -> Any:
    """Parse a YAML file strictly; every I/O or syntax problem is a one-line InputError."""
    text = _read_text(Path(path), what)
    try:
        return loads_yaml(text)
    except RecursionError:
        raise InputError(f"{what} {path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{what} {yaml_error_line(exc, str(path))}") from None


def parse_set_overrides(pairs: Optional[List[str]], flag: str = "--set") -> dict:
    """``['lr=1e-3', 'train={seq_len: 64}']`` -> settings, each value read as strict YAML."""
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = loads_yaml(value)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            column = f" at column {mark.column + 1} of the value" if mark is not None else ""
            raise InputError(f"{flag} {pair!r}: not valid YAML{column}: {_yaml_problem(exc)}") from None
    return overrides
