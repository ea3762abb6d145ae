"""The paths map: where each domain's data lives, per split, with shard shares.

A mixture names domains; trainers want file prefixes or folders. The paths map (YAML or
JSON, written by the user) bridges the two; :mod:`autoscale_ds.formats.export` turns a mixture
plus this map into each framework's config.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from autoscale_ds.errors import InputError
from autoscale_ds.loaders import json_error_line, loads_json, loads_yaml, yaml_error_line

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
Shard = tuple[str, float]
Blend = list[tuple[str, float]]  # (path, weight) pairs, mixture order


@dataclass(frozen=True)
class TrainStats:
    """Size of one domain's train data, as a domains manifest records it."""

    tokens: int
    documents: int

    @property
    def mean_document_tokens(self) -> float:
        return self.tokens / self.documents


@dataclass(frozen=True)
class DataPaths:
    """Where each domain's data lives: ``by_domain[domain][split] = [(path, share), ...]``.

    Every domain has a "train" split; "valid"/"test" are optional. ``source`` names the
    file the map came from so that every error can point back at it.
    """

    by_domain: dict[str, dict[str, list[Shard]]]
    source: str = "<data paths>"
    train_stats: Mapping[str, TrainStats] = field(default_factory=dict)
    """Per domain, from a domains manifest: converts token weights to per-example
    probabilities (hf) and bounds repetition (olmo-core). Empty for a hand-written map."""
    megatron_prefixes: bool = False
    """True when the paths are Megatron indexed-store prefixes (the map is a manifest)."""

    def __post_init__(self) -> None:
        _check_data_paths(self)

    @property
    def domains(self) -> list[str]:
        return list(self.by_domain)

    def shards(self, domain: str, split: str = "train") -> list[Shard]:
        return self.by_domain[domain].get(split, [])

    def has_split(self, split: str) -> bool:
        return any(split in splits for splits in self.by_domain.values())

    def domain_of_path(self) -> dict[str, str]:
        """Path -> domain; unique because ``_check_data_paths`` forbids sharing a path."""
        return {p: d for d, splits in self.by_domain.items() for sh in splits.values() for p, _ in sh}


def _check_data_paths(paths: DataPaths) -> None:
    # Also guards maps built in code, not only those loaded from a file.
    owner: dict[str, str] = {}
    for domain, splits in paths.by_domain.items():
        where = f"{paths.source}: domain {domain!r}"
        if "train" not in splits or not splits["train"]:
            raise InputError(f"{where} has no 'train' paths; every domain needs them")
        for split, shards in splits.items():
            if split not in SPLITS:
                raise InputError(f"{where}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
            shares = [share for _, share in shards]
            if not shards or any(not (s > 0 and math.isfinite(s)) for s in shares):
                raise InputError(f"{where}, split {split!r}: shares must be positive finite numbers")
            if abs(math.fsum(shares) - 1.0) > 1e-9:
                raise InputError(f"{where}, split {split!r}: shares sum to {math.fsum(shares)!r}, not 1")
            seen: set[str] = set()
            for path, _ in shards:
                if path in seen:
                    raise InputError(f"{where}, split {split!r}: path {path!r} is listed twice")
                seen.add(path)
                if owner.setdefault(path, domain) != domain:
                    raise InputError(f"{paths.source}: path {path!r} is listed under domains {owner[path]!r} "
                                     f"and {domain!r}; a path must belong to one domain to be read back")


# ----------------------------------------------------------------------------- loading


def load_data_paths(path: str | Path, manifest: str | Path | None = None) -> DataPaths:
    """Read a paths map from ``.json`` (JSON parser) or anything else (YAML, a JSON superset);
    a domains manifest (``autoscale.domains/v1``) stands for the stores it lists, with their
    sizes. ``manifest`` adds a manifest's sizes to a hand-written map."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read data-paths file {path}: {exc}") from exc
    obj = _parse_paths_text(text, path)
    if isinstance(obj, Mapping) and obj.get("schema") == "autoscale.domains/v1":
        paths = _manifest_stores(path)
    else:
        paths = data_paths_from_mapping(obj, source=str(path))
    return with_manifest_stats(paths, manifest) if manifest is not None else paths


def _parse_paths_text(text: str, path: Path) -> Any:
    """JSON for ``.json``, else YAML; both strict (a key given twice is refused: the last
    one would silently win), and a problem is one line naming FILE:LINE:COL."""
    try:
        if path.suffix.lower() == ".json":
            return loads_json(text) if text.strip() else None
        return loads_yaml(text)
    except RecursionError:
        raise InputError(f"data-paths file {path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(f"data-paths file {yaml_error_line(exc, str(path))}") from None
    except ValueError as exc:  # JSON syntax, a duplicate key, NaN
        raise InputError(f"data-paths file {json_error_line(exc, str(path))}") from None


def _manifest_stores(path: Path) -> DataPaths:
    """A domains manifest from `autoscale prepare` names its own stores: train and valid
    prefixes per domain, as absolute paths (trainers run from other directories)."""
    from .manifest import load_manifest

    manifest = load_manifest(path)
    mapping = {d: {"train": str(manifest.prefix(d, "train").resolve()),
                   "valid": str(manifest.prefix(d, "valid").resolve())} for d in manifest.domains}
    paths = data_paths_from_mapping(mapping, source=f"{path} stores")
    return replace(paths, train_stats=_train_stats(manifest), megatron_prefixes=True)


def with_manifest_stats(paths: DataPaths, manifest_path: str | Path) -> DataPaths:
    """``paths`` with the train sizes of a domains manifest (for a hand-written map whose
    domains hold the same documents as the prepared ones)."""
    from .manifest import load_manifest

    stats = _train_stats(load_manifest(manifest_path))
    missing = [d for d in paths.domains if d not in stats]
    if missing:
        log.warning("domains manifest %s lacks domain(s) %s of data-paths file %s; their sizes "
                    "are unknown", manifest_path, ", ".join(missing), paths.source)
    return replace(paths, train_stats={d: stats[d] for d in paths.domains if d in stats})


def _train_stats(manifest) -> dict[str, TrainStats]:
    # A domain with no documents has no mean length; it is left unknown, not divided by 0.
    return {d: TrainStats(e.train.tokens, e.train.documents) for d, e in manifest.domains.items()
            if e.train.documents > 0 and e.train.tokens > 0}


def data_paths_from_mapping(obj: Any, source: str = "<data paths>") -> DataPaths:
    """Build a ``DataPaths`` from an already-parsed object (see ``load_data_paths`` for forms)."""
    if obj is None:
        raise InputError(f"data-paths file {source} is empty; expected a mapping domain -> paths")
    if not isinstance(obj, Mapping):
        raise InputError(f"data-paths file {source}: expected a mapping domain -> paths, "
                         f"got {type(obj).__name__}")
    if not obj:
        raise InputError(f"data-paths file {source} names no domains")
    by_domain: dict[str, dict[str, list[Shard]]] = {}
    for domain, value in obj.items():
        if not isinstance(domain, str) or not domain.strip():
            raise InputError(f"data-paths file {source}: domain name {domain!r} must be a non-empty "
                             "string (YAML reads bare yes/no/on/off/numbers as other types; quote it)")
        by_domain[domain] = _parse_domain(value, f"data-paths file {source}: domain {domain!r}")
    return DataPaths(by_domain, source)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars too


def _parse_domain(value: Any, where: str) -> dict[str, list[Shard]]:
    # A mapping of numbers is {path: size}; any other mapping must be {split: paths}.
    if isinstance(value, Mapping) and value and not all(_is_number(v) for v in value.values()):
        for key in value:
            if key not in SPLITS:
                raise InputError(f"{where}: unknown split key {key!r}; expected train/valid/test, or a "
                                 "mapping path -> relative size where every size is a number")
        if "train" not in value:
            raise InputError(f"{where}: per-split paths need a 'train' entry")
        return {s: _parse_shards(value[s], f"{where}, split {s!r}") for s in SPLITS if s in value}
    return {"train": _parse_shards(value, where)}


def _parse_shards(value: Any, where: str) -> list[Shard]:
    """One path, a list of paths (equal shares) or {path: relative size}."""
    if isinstance(value, str):
        return [(_check_path(value, where), 1.0)]
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{where}: the list of paths is empty")
        return [(_check_path(p, where), 1.0 / len(value)) for p in value]
    if isinstance(value, Mapping):
        if not value:
            raise InputError(f"{where}: the mapping path -> size is empty")
        for p, size in value.items():
            _check_path(p, where)
            if not _is_number(size) or not math.isfinite(size) or size <= 0:
                raise InputError(f"{where}: size of {p!r} must be a positive finite number, got {size!r}")
        total = math.fsum(float(size) for size in value.values())
        return [(p, float(size) / total) for p, size in value.items()]  # float64, even for numpy input
    if value is None:
        raise InputError(f"{where} has no paths")
    raise InputError(f"{where}: expected a path, a list of paths or a mapping path -> size, "
                     f"got {type(value).__name__}")


def _check_path(path: Any, where: str) -> str:
    if not isinstance(path, str):
        raise InputError(f"{where}: path {path!r} must be a string, got {type(path).__name__}")
    if not path.strip():
        raise InputError(f"{where}: a path is empty")
    if "\0" in path:  # no file system or command line can carry it
        raise InputError(f"{where}: path {path!r} contains a NUL character")
    if path != path.strip():
        raise InputError(f"{where}: path {path!r} has leading or trailing whitespace")
    return path
