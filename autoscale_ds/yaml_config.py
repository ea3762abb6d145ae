"""Load a YAML settings file into a config dataclass, with errors that name the file.

Every YAML a user writes is read by :mod:`autoscale_ds.loaders`' strict loader (duplicate
keys refused, ``1e-3`` a number, one-line errors); its names are re-exported here.
"""

from dataclasses import fields
from typing import Any, Optional, Type, TypeVar

from .errors import InputError
from .loaders import (StrictYAMLLoader, loads_yaml, parse_set_overrides, read_yaml,  # noqa: F401
                      yaml_error_line)

T = TypeVar("T")


def overrides_from(pairs) -> dict:
    """``--set KEY=VALUE`` pairs -> settings, each value read as strict YAML: the one reader
    behind every entry point's ``--set`` (autoscale pipeline/ddo-run, the trainer)."""
    return parse_set_overrides(pairs, "--set")


def load_yaml_config(path, cls: Type[T], what: str, overrides: Optional[dict] = None,
                     required: tuple = ()) -> T:
    """``cls(**settings)``; unknown keys are errors (a typo must never be silently ignored)."""
    raw: Any = read_yaml(path, what)
    if not isinstance(raw, dict):
        raise InputError(f"{what} {path}: expected a mapping of settings")
    raw.update(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(key) for key in set(raw) - known)
    if unknown:
        raise InputError(f"{what} {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    missing = [name for name in required if name not in raw]
    if missing:
        raise InputError(f"{what} {path}: missing required setting(s) {missing}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise InputError(f"{what} {path}: {exc}") from None
