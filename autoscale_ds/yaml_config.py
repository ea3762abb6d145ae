"""Load a YAML settings file into a config dataclass, with errors that name the file."""

from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Type, TypeVar

import yaml

from .errors import InputError

T = TypeVar("T")


def load_yaml_config(path, cls: Type[T], what: str, overrides: Optional[dict] = None,
                     required: tuple = ()) -> T:
    """``cls(**settings)``; unknown keys are errors (a typo must never be silently ignored)."""
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{what} {path}: cannot read ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{what} {path}: expected a mapping of settings")
    raw.update(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{what} {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    missing = [name for name in required if name not in raw]
    if missing:
        raise InputError(f"{what} {path}: missing required setting(s) {missing}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise InputError(f"{what} {path}: {exc}") from None
