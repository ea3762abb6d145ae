"""``autoscale prepare``: raw text per domain -> train/valid token stores + a manifest.

Steps: resolve every domain's sources (all problems reported at once), get a tokenizer
(train SentencePiece on a sample with the same number of characters from every domain, or
load a local one), then per domain: split documents into train / held-out valid by a
seeded choice, tokenise with worker processes, and write Megatron-format stores. The
manifest is rewritten atomically after each domain, so a crash loses at most the domain in
progress; a rerun skips domains whose inputs, tokenizer and settings are unchanged.

The output directory is locked for the run, files there that prepare did not write are
never replaced unless ``overwrite`` says so, and temp files of killed runs are removed (see
``prepare_dir``). Domains of an earlier run that this run does not name stay in the
manifest when they were made with the same tokenizer, seed and valid fraction; else the
run stops, unless ``drop_other_domains`` removes them.
"""

import hashlib
import itertools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from ..atomic import atomic_write_text
from ..errors import InputError
from .encode import encode_stream
from .indexed import CorruptDataError, IndexedTokenStore, IndexedTokenWriter, optimal_token_dtype
from ..formats.manifest import DomainEntry, Manifest, SplitEntry, load_manifest, save_manifest
from .prepare_dir import (MANIFEST_FILE, TOKENIZER_FILE, TOKENIZER_STAMP, OutDir, locked_out_dir,
                          output_errors, store_files, store_prefix)
from .samples import stable_hash
from .sources import (DecodeTally, DomainSpec, ResolvedDomain, count_documents, iter_documents,
                      resolve)
from .tokenizer import Tokenizer, load_tokenizer, spec_for_path, train_sentencepiece

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the store layout or the split rule changes


@dataclass
class PrepareConfig:
    out_dir: str
    domains: List[DomainSpec]
    tokenizer: Optional[str] = None
    """Local SentencePiece model file or Hugging Face tokenizer directory."""
    train_vocab_size: Optional[int] = None
    """Train a SentencePiece BPE model of this size instead."""
    eod_token: Optional[str] = None
    valid_fraction: float = 0.05
    """Share of each domain's documents held out for validation (at least one document)."""
    seed: int = 0
    workers: int = 1
    tokenizer_sample_chars: int = 2_000_000
    """Characters drawn from EACH domain to train the tokenizer (balanced across domains)."""
    progress: bool = True
    overwrite: bool = False
    """Replace a manifest or store files in ``out_dir`` that prepare did not write."""
    drop_other_domains: bool = False
    """Remove domains of an earlier run that this run does not name (manifest and stores)."""

    def __post_init__(self):
        problems = []
        if (self.tokenizer is None) == (self.train_vocab_size is None):
            problems.append("give exactly one of a tokenizer path (--tokenizer) or a vocabulary "
                            "size to train (--train-tokenizer)")
        if self.train_vocab_size is not None and self.train_vocab_size < 300:
            problems.append(f"--train-tokenizer vocabulary must be >= 300 (256 byte pieces + "
                            f"specials), got {self.train_vocab_size}")
        if not 0 < self.valid_fraction < 1:
            problems.append(f"valid fraction must be in (0, 1), got {self.valid_fraction}")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if not self.domains:
            problems.append("no domains given")
        names = [d.name for d in self.domains]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"domain names given twice: {duplicates}")
        bad_names = [n for n in names if not n or "/" in n or n.startswith(".")]
        if bad_names:
            problems.append(f"domain names must be non-empty, without '/', not start with '.': {bad_names}")
        if problems:
            raise InputError("invalid prepare settings: " + "; ".join(problems))


def prepare(config: PrepareConfig) -> Manifest:
    out_dir = Path(config.out_dir)
    with output_errors(out_dir):
        resolved = _resolve_all(config.domains)
    with locked_out_dir(out_dir) as out:
        return _prepare_locked(config, resolved, out)


def _prepare_locked(config: PrepareConfig, resolved: List[ResolvedDomain], out: OutDir) -> Manifest:
    previous = _previous_manifest(out.root, config.overwrite)
    out.remove_stale_temps()  # only once the manifest says the directory is ours (or none)
    tokenizer = _reusable_tokenizer(config, resolved, out.root)
    _refuse_foreign(out, resolved, previous, tokenizer, config.overwrite)
    kept = _kept_domains(config, resolved, previous, tokenizer)
    if tokenizer is None:
        tokenizer = _train_tokenizer(config, resolved, out)
    manifest = Manifest(out.root, _tokenizer_entry(tokenizer, out.root), config.seed,
                        config.valid_fraction, dict(kept))
    for domain in resolved:
        out.claim(_store_files_of(domain.spec.name))  # before writing: a crash leaves them ours
        manifest.domains[domain.spec.name] = _prepare_domain(domain, tokenizer, config, previous)
        save_manifest(manifest)
    if config.drop_other_domains:
        _remove_unlisted_stores(out, manifest)
    logger.info("prepared %d domain(s) in %s", len(resolved), out.root)
    return manifest


def _store_files_of(name: str) -> List[str]:
    return [f for split in ("train", "valid") for f in store_files(store_prefix(name, split))]


def _refuse_foreign(out: OutDir, resolved: List[ResolvedDomain], previous: Optional[Manifest],
                    tokenizer: Optional[Tokenizer], overwrite: bool) -> None:
    """Stop before replacing files this run would write that prepare did not write."""
    ours = _listed_files(previous)
    out.claim(ours)  # a rewritten manifest may drop them; they stay ours all the same
    targets = [f for domain in resolved for f in _store_files_of(domain.spec.name)]
    if tokenizer is None and not (out.root / TOKENIZER_STAMP).exists():
        targets.append(TOKENIZER_FILE)  # a model without our training stamp: someone else's
    out.refuse_foreign(targets, set(ours), overwrite)


def _resolve_all(specs: List[DomainSpec]) -> List[ResolvedDomain]:
    resolved, problems = [], []
    for spec in specs:
        try:
            resolved.append(resolve(spec))
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))
    return resolved


def _previous_manifest(out_dir: Path, overwrite: bool) -> Optional[Manifest]:
    path = out_dir / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        return load_manifest(path)
    except InputError as exc:
        if overwrite:
            logger.warning("--overwrite: replacing %s (%s)", path, exc)
            return None
        raise InputError(f"--out-dir {out_dir} already holds {path}, which is not a manifest "
                         f"written by autoscale prepare ({exc}); choose another --out-dir, or "
                         "pass --overwrite to replace it") from None


def _listed_files(previous: Optional[Manifest]) -> List[str]:
    """Files of the output directory that our previous manifest names."""
    if previous is None:
        return []
    files = [f for entry in previous.domains.values() for split in (entry.train, entry.valid)
             for f in store_files(split.prefix)]
    if previous.tokenizer.get("path") == TOKENIZER_FILE:
        files.append(TOKENIZER_FILE)
    return files


def _kept_domains(config: PrepareConfig, resolved: List[ResolvedDomain],
                  previous: Optional[Manifest],
                  tokenizer: Optional[Tokenizer]) -> Dict[str, DomainEntry]:
    """Domains of the previous manifest that this run does not name, if they still fit."""
    named = {d.spec.name for d in resolved}
    others = {n: e for n, e in (previous.domains.items() if previous else []) if n not in named}
    if not others:
        return {}
    if config.drop_other_domains:
        logger.info("--drop-other-domains: removing domain(s) %s from %s", sorted(others),
                    previous.root)
        return {}
    mismatch = _settings_mismatch(config, previous, tokenizer)
    if mismatch:
        raise InputError(f"{previous.root / MANIFEST_FILE} also holds domain(s) {sorted(others)}, "
                         f"not named in this run and made with {mismatch}; name them again "
                         "with --domain, or pass --drop-other-domains to remove them")
    logger.info("keeping domain(s) %s of the previous run (not named in this one; "
                "--drop-other-domains removes them)", sorted(others))
    return others


def _settings_mismatch(config: PrepareConfig, previous: Manifest,
                       tokenizer: Optional[Tokenizer]) -> str:
    """What makes the previous domains differ from this run's ('' when nothing does)."""
    if tokenizer is None:
        return "the tokenizer that this run trains anew"
    new = tokenizer.describe()
    if any(previous.tokenizer.get(k) != new[k] for k in ("sha256", "eod_id")):
        return "another tokenizer"
    if (previous.seed, previous.valid_fraction) != (config.seed, config.valid_fraction):
        return (f"seed {previous.seed} and valid fraction {previous.valid_fraction:g} "
                f"(this run: {config.seed}, {config.valid_fraction:g})")
    return ""


def _remove_unlisted_stores(out: OutDir, manifest: Manifest) -> None:
    listed = set(_listed_files(manifest))
    stale = [f for f in out.owned_stores() if f not in listed]
    if stale:
        logger.info("--drop-other-domains: deleting %d store file(s) no domain uses", len(stale))
        out.remove_stores(stale)


def _tokenizer_entry(tokenizer: Tokenizer, out_dir: Path) -> dict:
    entry = tokenizer.describe()
    path = Path(entry["path"]).resolve()
    # Inside the output directory the path is stored relative, so the directory can move.
    if path.is_relative_to(out_dir.resolve()):
        entry["path"] = str(path.relative_to(out_dir.resolve()))
    return entry


# ------------------------------------------------------------------------ tokenizer


def _reusable_tokenizer(config: PrepareConfig, resolved: List[ResolvedDomain],
                        out_dir: Path) -> Optional[Tokenizer]:
    """The given tokenizer, or the one trained here before on the same inputs and settings;
    None when one must be trained."""
    if config.tokenizer is not None:
        return load_tokenizer(spec_for_path(config.tokenizer, config.eod_token))
    model_path = out_dir / TOKENIZER_FILE
    fingerprint = _tokenizer_training_fingerprint(config, resolved)
    if not model_path.exists() or _stamped_fingerprint(out_dir / TOKENIZER_STAMP) != fingerprint:
        return None
    logger.info("tokenizer %s is up to date, reusing it", model_path)
    return load_tokenizer(spec_for_path(str(model_path), config.eod_token))


def _stamped_fingerprint(stamp_path: Path) -> Optional[str]:
    try:
        payload = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or damaged: train again
    return payload.get("fingerprint") if isinstance(payload, dict) else None


def _train_tokenizer(config: PrepareConfig, resolved: List[ResolvedDomain],
                     out: OutDir) -> Tokenizer:
    model_path = out.root / TOKENIZER_FILE
    out.claim([TOKENIZER_FILE])
    logger.info("training a %d-piece SentencePiece BPE tokenizer on %s characters per domain",
                config.train_vocab_size, f"{config.tokenizer_sample_chars:,}")
    lines = _balanced_sample_lines(resolved, config.tokenizer_sample_chars, config.seed)
    train_sentencepiece(lines, config.train_vocab_size, model_path)
    stamp = {"fingerprint": _tokenizer_training_fingerprint(config, resolved)}
    atomic_write_text(out.root / TOKENIZER_STAMP, json.dumps(stamp) + "\n")
    return load_tokenizer(spec_for_path(str(model_path), config.eod_token))


def _tokenizer_training_fingerprint(config: PrepareConfig, resolved: List[ResolvedDomain]) -> str:
    parts = [config.train_vocab_size, config.tokenizer_sample_chars, config.seed, FORMAT_VERSION]
    parts += [(d.spec.name, d.fingerprint()) for d in resolved]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _balanced_sample_lines(resolved: List[ResolvedDomain], chars_per_domain: int,
                           seed: int) -> Iterator[str]:
    """Lines of a seeded random subset of each domain's documents, ~equal characters each."""
    for domain in resolved:
        num_docs = count_documents(domain)
        approx_chars = sum(_size_of(p) for p in domain.files)
        keep_count = max(1, int(num_docs * min(1.0, chars_per_domain / max(approx_chars, 1))))
        rng = np.random.default_rng([seed, stable_hash(domain.spec.name), 7])
        keep = np.zeros(num_docs, dtype=bool)
        keep[rng.permutation(num_docs)[:keep_count]] = True
        budget = chars_per_domain
        for index, text in enumerate(iter_documents(domain)):
            if budget <= 0:
                break
            if keep[index]:
                text = text[:budget]
                budget -= len(text)
                yield from text.split("\n")


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- domains


def _domain_fingerprint(domain: ResolvedDomain, tokenizer: Tokenizer, config: PrepareConfig) -> str:
    parts = [domain.fingerprint(), tokenizer.fingerprint(), tokenizer.eod_id, config.seed,
             config.valid_fraction, FORMAT_VERSION]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _prepare_domain(domain: ResolvedDomain, tokenizer: Tokenizer, config: PrepareConfig,
                    previous: Optional[Manifest]) -> DomainEntry:
    name = domain.spec.name
    fingerprint = _domain_fingerprint(domain, tokenizer, config)
    if _up_to_date(previous, name, fingerprint):
        logger.info("domain %r is up to date, skipped", name)
        return previous.domains[name]
    if previous is not None and name in previous.domains:
        logger.info("domain %r: inputs or settings changed, preparing it again", name)
    return _tokenize_domain(domain, tokenizer, config, fingerprint)


def _up_to_date(previous: Optional[Manifest], name: str, fingerprint: str) -> bool:
    if previous is None or name not in previous.domains:
        return False
    if previous.domains[name].fingerprint != fingerprint:
        return False
    try:
        for split in ("train", "valid"):
            IndexedTokenStore(previous.prefix(name, split)).close()
    except CorruptDataError as exc:
        logger.warning("domain %r: existing store is damaged (%s); preparing it again", name, exc)
        return False
    return True


def _tokenize_domain(domain: ResolvedDomain, tokenizer: Tokenizer, config: PrepareConfig,
                     fingerprint: str) -> DomainEntry:
    name = domain.spec.name
    tally = DecodeTally()
    num_docs, held_out, texts = _split_documents(domain, config, tally)
    prefixes = {split: store_prefix(name, split) for split in ("train", "valid")}
    dtype = optimal_token_dtype(tokenizer.vocab_size)
    counts = {"train": [0, 0], "valid": [0, 0]}
    out_dir = Path(config.out_dir)
    with IndexedTokenWriter(out_dir / prefixes["train"], dtype) as train, \
            IndexedTokenWriter(out_dir / prefixes["valid"], dtype) as valid, \
            _progress(config, num_docs, name) as bar:
        for index, ids in enumerate(encode_stream(texts, tokenizer.spec, config.workers)):
            bar.update(1)
            if not ids:
                continue  # an empty document would be a lone end-of-document token
            split = "valid" if held_out[index] else "train"
            (valid if held_out[index] else train).add_document(ids + [tokenizer.eod_id])
            counts[split][0] += 1
            counts[split][1] += len(ids) + 1
        _check_not_empty(name, counts, domain, config)
    splits = {s: SplitEntry(prefixes[s], *counts[s]) for s in counts}
    logger.info("domain %r: %s train tokens in %d documents, %s valid tokens in %d documents",
                name, f"{counts['train'][1]:,}", counts["train"][0], f"{counts['valid'][1]:,}",
                counts["valid"][0])
    return DomainEntry(splits["train"], splits["valid"], [str(p) for p in domain.files],
                       fingerprint, _undecodable_report(domain, tally))


def _undecodable_report(domain: ResolvedDomain, tally: DecodeTally) -> Optional[dict]:
    """Documents changed or dropped because they did not decode: logged and kept in the
    manifest (absent when there were none)."""
    if not tally.documents:
        return None
    spec = domain.spec
    action = "skipped" if spec.on_decode_error == "skip" else "decoded with U+FFFD replacements"
    logger.warning("domain %r: %d document(s) are not valid %s text and were %s (first: %s)",
                   spec.name, tally.documents, spec.encoding, action, tally.first)
    return {"documents": tally.documents, "encoding": spec.encoding,
            "on_decode_error": spec.on_decode_error, "first": tally.first}


def _split_documents(domain: ResolvedDomain, config: PrepareConfig, tally: DecodeTally):
    """``(number of documents, held-out mask, texts)``: explicit validation files when the
    domain names them (they follow the training documents), else a seeded random choice."""
    if domain.valid_files is None:
        num_docs = count_documents(domain)
        held_out = _valid_mask(domain.spec.name, num_docs, config.valid_fraction, config.seed)
        documents = iter_documents(domain, tally)
    else:
        valid = domain.valid_domain()
        num_train, num_valid = count_documents(domain), count_documents(valid)
        num_docs = num_train + num_valid
        held_out = np.arange(num_docs) >= num_train
        documents = itertools.chain(iter_documents(domain, tally), iter_documents(valid, tally))
    # Whitespace-only documents become empty ones, which the writer skips.
    return num_docs, held_out, (text if text.strip() else "" for text in documents)


def _valid_mask(name: str, num_docs: int, fraction: float, seed: int) -> np.ndarray:
    """Seeded choice of held-out documents: same seed and inputs, same split."""
    if num_docs < 2:
        raise InputError(f"domain {name!r} has {num_docs} document(s); at least 2 are needed to "
                         "hold one out for validation")
    num_valid = min(num_docs - 1, max(1, round(fraction * num_docs)))
    rng = np.random.default_rng([seed, stable_hash(name), 11])
    mask = np.zeros(num_docs, dtype=bool)
    mask[rng.permutation(num_docs)[:num_valid]] = True
    return mask


def _check_not_empty(name: str, counts: Dict[str, list], domain: ResolvedDomain,
                     config: PrepareConfig) -> None:
    (train_docs, train_tokens), (valid_docs, _) = counts["train"], counts["valid"]
    if train_docs == 0:
        raise InputError(f"domain {name!r}: the training split is empty: no non-empty training "
                         f"documents (sources: {domain.spec.sources}); add text"
                         + ("" if domain.valid_files else " or lower --valid-fraction"))
    if valid_docs > 0:
        return
    have = f"it has {train_tokens:,} training tokens in {train_docs:,} documents, but"
    if domain.valid_files is not None:
        raise InputError(f"domain {name!r}: the validation split is empty: {have} its "
                         f"validation sources {[str(p) for p in domain.valid_files]} hold no "
                         "text; add text to them")
    raise InputError(f"domain {name!r}: the validation split is empty: {have} every held-out "
                     f"document is empty; raise --valid-fraction (now {config.valid_fraction:g}) "
                     "or remove the empty documents")


def _progress(config: PrepareConfig, total: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"tokenize {name}", unit="doc", file=sys.stderr,
                disable=not config.progress or None)
