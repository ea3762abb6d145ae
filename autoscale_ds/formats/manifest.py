"""The domains manifest ``autoscale.domains/v1``: what ``autoscale prepare`` produced.

YAML, next to the token stores it lists; store prefixes are relative to the manifest's
directory so a prepared directory can be moved or copied to a cluster as a whole.

    schema: autoscale.domains/v1
    tokenizer: {kind, path, vocab_size, eod_id, sha256}
    seed: 0
    valid_fraction: 0.05
    domains:
      web:
        train: {prefix: web/train_text_document, documents: 950, tokens: 1234567}
        valid: {prefix: web/valid_text_document, documents: 50, tokens: 65432}
        sources: [...]
        fingerprint: <sha256 of inputs, tokenizer and split settings>
        undecodable: {documents: 3, encoding: utf-8, on_decode_error: skip, first: a.txt}
                     # only when documents did not decode and were skipped or replaced
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..atomic import atomic_write_text
from ..errors import InputError
from ..loaders import QuotingDumper, loads_yaml, yaml_error_line

MANIFEST_SCHEMA = "autoscale.domains/v1"
SPLITS = ("train", "valid")


@dataclass
class SplitEntry:
    prefix: str
    """Relative to the manifest's directory, without .bin/.idx."""
    documents: int
    tokens: int


@dataclass
class DomainEntry:
    train: SplitEntry
    valid: SplitEntry
    sources: List[str] = field(default_factory=list)
    fingerprint: str = ""
    undecodable: Optional[Dict[str, Any]] = None
    """Documents that did not decode and were skipped or replaced (None: there were none)."""


@dataclass
class Manifest:
    root: Path
    """Directory the manifest lives in; prefixes are resolved against it."""
    tokenizer: Dict[str, Any]
    seed: int
    valid_fraction: float
    domains: Dict[str, DomainEntry] = field(default_factory=dict)

    def prefix(self, domain: str, split: str = "train") -> Path:
        if domain not in self.domains:
            raise InputError(f"domain {domain!r} is not in the manifest {self.root}; it has "
                             f"{sorted(self.domains)}")
        return self.root / getattr(self.domains[domain], split).prefix

    def to_dict(self) -> dict:
        return {
            "schema": MANIFEST_SCHEMA, "tokenizer": dict(self.tokenizer), "seed": self.seed,
            "valid_fraction": self.valid_fraction,
            "domains": {name: _domain_dict(entry) for name, entry in self.domains.items()},
        }


def _domain_dict(entry: DomainEntry) -> dict:
    payload = {split: dict(vars(getattr(entry, split))) for split in SPLITS} | {
        "sources": list(entry.sources), "fingerprint": entry.fingerprint}
    if entry.undecodable:
        payload["undecodable"] = dict(entry.undecodable)
    return payload


def save_manifest(manifest: Manifest, path: Optional[Path] = None) -> Path:
    path = Path(path or manifest.root / "manifest.yaml")
    text = yaml.dump(manifest.to_dict(), Dumper=QuotingDumper, sort_keys=False,
                     default_flow_style=False)
    return atomic_write_text(path, text)


def load_manifest(path) -> Manifest:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"domains manifest {path}: file not found (run `autoscale prepare`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"domains manifest {path}: cannot read ({exc})") from None
    try:
        payload = loads_yaml(text)  # strict: a hand edit giving a key twice is refused
    except RecursionError:
        raise InputError(f"domains manifest {path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(f"domains manifest {yaml_error_line(exc, str(path))}") from None
    return manifest_from_dict(payload, path)


def manifest_from_dict(payload: Any, path: Path) -> Manifest:
    where = f"domains manifest {path}"
    if not isinstance(payload, dict) or payload.get("schema") != MANIFEST_SCHEMA:
        found = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{where}: unknown schema {found!r}; expected {MANIFEST_SCHEMA!r}")
    tokenizer, domains = payload.get("tokenizer"), payload.get("domains")
    if not isinstance(tokenizer, dict) or not isinstance(domains, dict):
        raise InputError(f"{where}: needs 'tokenizer' and 'domains' mappings")
    fraction = payload.get("valid_fraction", 0.0)
    if not isinstance(fraction, (int, float)) or not 0 <= fraction < 1 or math.isnan(fraction):
        raise InputError(f"{where}: 'valid_fraction' must be in [0, 1), got {fraction!r}")
    manifest = Manifest(path.parent, tokenizer, int(payload.get("seed", 0)), float(fraction))
    for name, raw in domains.items():
        if not isinstance(name, str):  # e.g. 1e3 unquoted, which YAML reads as a number
            raise InputError(f"{where}: domain name {name!r} is a {type(name).__name__}, not "
                             "text; quote it in the manifest")
        manifest.domains[name] = _domain_entry(raw, f"{where}: domain {name!r}")
    return manifest


def _domain_entry(raw: Any, where: str) -> DomainEntry:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping")
    splits = [_split_entry(raw.get(split), f"{where}: {split}") for split in SPLITS]
    sources = raw.get("sources", [])
    if not isinstance(sources, list):
        raise InputError(f"{where}: 'sources' must be a list")
    undecodable = raw.get("undecodable")
    if undecodable is not None and not isinstance(undecodable, dict):
        raise InputError(f"{where}: 'undecodable' must be a mapping")
    return DomainEntry(*splits, [str(s) for s in sources], str(raw.get("fingerprint", "")),
                       undecodable)


def _split_entry(raw: Any, where: str) -> SplitEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("prefix"), str):
        raise InputError(f"{where}: expected {{prefix, documents, tokens}}")
    counts = [raw.get("documents"), raw.get("tokens")]
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise InputError(f"{where}: 'documents' and 'tokens' must be non-negative integers")
    return SplitEntry(raw["prefix"], *counts)
