"""Where a domain's raw documents come from, read in one deterministic order.

A source is a file, a directory (all files below it, sorted), or a glob. By suffix:
``.jsonl`` gives one document per line (a chosen field), ``.parquet`` and ``.arrow`` one
per row, and anything else is plain text, one document per file. A directory written by
Hugging Face ``datasets.save_to_disk`` is opened with ``datasets.load_from_disk``: a
``Dataset`` gives one document per row, a ``DatasetDict`` the rows of one split (``split``;
another split can be the held-out validation set, ``valid_split``). Binary files found
while walking a directory are skipped with a count in the log.

Text is decoded with the domain's ``encoding`` (UTF-8 unless told). A document that does
not decode, or a plain-text file holding NUL bytes (binary data named directly), is never
changed silently: ``on_decode_error`` says whether to stop with an error naming the first
such file and the count (the default), skip those documents, or substitute U+FFFD.

A JSONL record that gives a key twice is refused with its file and line: plain JSON readers
keep the last one silently, so which text was meant is unknown.
"""

import codecs
import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from ..errors import InputError
from ..loaders import DuplicateKeyError
from .source_tables import (TABLE_SUFFIXES, arrow_batches, check_dataset_column,
                            dataset_documents, dataset_split_dir, is_dataset_dict,
                            is_saved_dataset, load_dataset, table_documents, valid_split_dirs)

logger = logging.getLogger(__name__)

_BINARY_PROBE_BYTES = 8192
DEFAULT_ENCODING = "utf-8"
DECODE_POLICIES = ("error", "skip", "replace")
_DECODE_HELP = ("name the encoding with --encoding [DOMAIN=]ENCODING (e.g. latin-1), or pass "
                "--on-decode-error skip (drop those documents) or replace (substitute U+FFFD)")


@dataclass
class DomainSpec:
    """One domain of ``autoscale prepare``."""

    name: str
    sources: List[str]
    """Files, directories or globs."""
    field: str = "text"
    """Field holding the text in JSONL / Parquet / Arrow / datasets sources."""
    valid_sources: Optional[List[str]] = None
    """Held-out documents given explicitly: then ``sources`` are all training text and no
    documents are drawn at random for validation."""
    encoding: str = DEFAULT_ENCODING
    """Encoding of plain-text and JSONL files."""
    on_decode_error: str = "error"
    """What a document that does not decode does: "error", "skip" or "replace"."""
    split: Optional[str] = None
    """Split of ``DatasetDict`` sources to read (default: "train", or the only split)."""
    valid_split: Optional[str] = None
    """Split of the same ``DatasetDict`` sources held out for validation (default: none,
    a seeded random share of ``split`` is held out)."""


@dataclass
class ResolvedDomain:
    spec: DomainSpec
    files: List[Path] = field(default_factory=list)
    valid_files: Optional[List[Path]] = None
    """The explicit validation files, when the spec names them."""

    def fingerprint(self) -> str:
        """Changes when any input file is added, removed, resized or touched, or the field."""
        digest = hashlib.sha256(self.spec.field.encode())
        # Only non-default decoding enters the digest: existing fingerprints stay valid.
        if (self.spec.encoding, self.spec.on_decode_error) != (DEFAULT_ENCODING, "error"):
            digest.update(f"\0{self.spec.encoding}\0{self.spec.on_decode_error}\n".encode())
        for path in self.files:
            digest.update(_file_stamp(path))
        if self.valid_files is not None:
            digest.update(b"valid\n")
            for path in self.valid_files:
                digest.update(_file_stamp(path))
        return digest.hexdigest()

    def valid_domain(self) -> "ResolvedDomain":
        """The explicit validation files as a domain of their own, for reading."""
        return ResolvedDomain(self.spec, list(self.valid_files or []))


def _file_stamp(path: Path) -> bytes:
    if path.is_dir():  # a saved dataset: its files change, not the directory's own stamp
        return b"".join(_file_stamp(p) for p in sorted(path.rglob("*")) if p.is_file())
    stat = path.stat()
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()


def resolve(spec: DomainSpec) -> ResolvedDomain:
    """Expand every source of a domain into files; problems name the domain and source."""
    if not spec.sources:
        raise InputError(f"domain {spec.name!r} has no sources")
    _check_decoding(spec)
    files: List[Path] = []
    for source in spec.sources:
        files.extend(_expand(spec, source))
    valid_files = None
    if spec.valid_sources is not None:
        if not spec.valid_sources:
            raise InputError(f"domain {spec.name!r} has an empty list of validation sources")
        if spec.valid_split is not None:
            raise InputError(f"domain {spec.name!r}: give validation sources or a validation "
                             "split (--valid-split), not both")
        valid_files = list(dict.fromkeys(p for s in spec.valid_sources
                                         for p in _expand(spec, s)))
    elif spec.valid_split is not None:
        valid_files = valid_split_dirs(spec)
    files = list(dict.fromkeys(files))
    _check_jsonl_encoding(spec, files + (valid_files or []))
    return ResolvedDomain(spec, files, valid_files)


def _check_decoding(spec: DomainSpec) -> None:
    try:
        codecs.lookup(spec.encoding)
    except LookupError:
        raise InputError(f"domain {spec.name!r}: unknown encoding {spec.encoding!r} (--encoding; "
                         "e.g. utf-8, latin-1, cp1252, utf-16)") from None
    if spec.on_decode_error not in DECODE_POLICIES:
        raise InputError(f"domain {spec.name!r}: --on-decode-error must be one of "
                         f"{list(DECODE_POLICIES)}, got {spec.on_decode_error!r}")


def _check_jsonl_encoding(spec: DomainSpec, files: List[Path]) -> None:
    # JSONL is split into lines as bytes, which needs "\n" to be the byte 0x0a.
    sample = b'{"a": 1}\n'
    try:
        ascii_compatible = sample.decode(spec.encoding) == sample.decode("ascii")
    except UnicodeDecodeError:
        ascii_compatible = False
    jsonl = [p for p in files if p.suffix == ".jsonl"]
    if jsonl and not ascii_compatible:
        raise InputError(f"domain {spec.name!r}: JSONL source {jsonl[0]} cannot be read as "
                         f"{spec.encoding!r}; JSONL needs an ASCII-compatible encoding "
                         "(utf-8, latin-1, cp1252, ...)")


def _expand(spec: DomainSpec, source: str) -> List[Path]:
    path = Path(source)
    if path.is_dir():
        if is_dataset_dict(path):
            return [dataset_split_dir(spec, path)]
        if is_saved_dataset(path):
            check_dataset_column(spec, path)
            return [path]
        return _text_files_under(spec.name, path)
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise InputError(f"domain {spec.name!r}: source {source!r} is not a file or directory "
                         "and matches no files")
    return files


def _text_files_under(domain: str, directory: Path) -> List[Path]:
    files, skipped = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue  # .git, .cache and friends are never documents
        _refuse_nested_dataset(domain, directory, path)
        if path.suffix in (".jsonl", *TABLE_SUFFIXES) or not _looks_binary(domain, path):
            files.append(path)
        else:
            skipped += 1
    if skipped:
        logger.info("domain %r: skipped %d binary file(s) under %s", domain, skipped, directory)
    if not files:
        raise InputError(f"domain {domain!r}: directory {directory} holds no text files")
    return files


def _refuse_nested_dataset(domain: str, directory: Path, path: Path) -> None:
    # Its JSON metadata would become documents and its splits would be merged.
    if path.name in ("dataset_dict.json", "state.json") and \
            (is_dataset_dict(path.parent) or is_saved_dataset(path.parent)):
        raise InputError(f"domain {domain!r}: {directory} holds a datasets.save_to_disk "
                         f"directory, {path.parent}; name that directory as a source of its own")


def _looks_binary(domain: str, path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return b"\0" in handle.read(_BINARY_PROBE_BYTES)
    except OSError as exc:
        raise _unreadable(domain, path, exc) from None


def _unreadable(domain: str, path: Path, exc: OSError) -> InputError:
    return InputError(f"domain {domain!r}: cannot read {path}: {exc.strerror or exc}")


# ------------------------------------------------------------------------- reading


@dataclass
class DecodeTally:
    """Documents that did not decode and were skipped or replaced, for the log and manifest."""

    documents: int = 0
    first: Optional[str] = None

    def record(self, where: str) -> None:
        self.documents += 1
        self.first = self.first or where


def count_documents(domain: ResolvedDomain) -> int:
    return sum(_count_in_file(domain, path) for path in domain.files)


def iter_documents(domain: ResolvedDomain, tally: Optional[DecodeTally] = None) -> Iterator[str]:
    """Every document of the domain as text, in a fixed order. A skipped undecodable document
    is an empty string, so positions match ``count_documents``."""
    for path in domain.files:
        yield from _documents_in_file(domain, path, tally)


def _count_in_file(domain: ResolvedDomain, path: Path) -> int:
    if path.is_dir():
        return load_dataset(domain.spec.name, path).num_rows
    if path.suffix in TABLE_SUFFIXES:
        return sum(batch.num_rows for batch in arrow_batches(domain, path))
    if path.suffix == ".jsonl":
        try:
            with open(path, "rb") as handle:
                return sum(1 for line in handle if line.strip())
        except OSError as exc:
            raise _unreadable(domain.spec.name, path, exc) from None
    return 1


def _documents_in_file(domain: ResolvedDomain, path: Path,
                       tally: Optional[DecodeTally]) -> Iterator[str]:
    if path.is_dir():
        yield from dataset_documents(domain, path)
    elif path.suffix in TABLE_SUFFIXES:
        yield from table_documents(domain, path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(domain, path, tally)
    else:
        yield _decode(domain, _read_bytes(domain, path), str(path), tally, is_file=True)


def _read_bytes(domain: ResolvedDomain, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(domain.spec.name, path, exc) from None


def _decoded(raw: bytes, encoding: str, is_file: bool) -> Tuple[str, Optional[str]]:
    """``(text, None)``, or ``("", why raw is not text in encoding)``."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        return "", f"byte 0x{raw[exc.start]:02x} at offset {exc.start} is not valid {encoding}"
    if is_file and "\0" in text:
        return "", "it holds NUL characters (binary data?)"
    return text, None


def _decode(domain: ResolvedDomain, raw: bytes, where: str, tally: Optional[DecodeTally],
            is_file: bool) -> str:
    encoding, policy = domain.spec.encoding, domain.spec.on_decode_error
    text, problem = _decoded(raw, encoding, is_file)
    if problem is None:
        return text
    if policy == "error":
        raise _decode_error(domain, where, problem)
    if tally is not None:
        tally.record(where)
    return "" if policy == "skip" else raw.decode(encoding, errors="replace")


def _decode_error(domain: ResolvedDomain, where: str, problem: str) -> InputError:
    every = domain.files + (domain.valid_files or [])
    bad = sum(1 for path in every if _file_has_decode_problem(domain, path))
    return InputError(f"domain {domain.spec.name!r}: {where} is not {domain.spec.encoding} text "
                      f"({problem}); {bad} of {len(every)} file(s) of this domain have such "
                      f"problems; {_DECODE_HELP}")


def _file_has_decode_problem(domain: ResolvedDomain, path: Path) -> bool:
    encoding = domain.spec.encoding
    if path.is_dir() or path.suffix in TABLE_SUFFIXES:
        return False  # Arrow strings are UTF-8 by construction
    if path.suffix == ".jsonl":
        try:
            with open(path, "rb") as handle:
                return any(_decoded(line, encoding, False)[1] for line in handle)
        except OSError as exc:
            raise _unreadable(domain.spec.name, path, exc) from None
    return _decoded(_read_bytes(domain, path), encoding, True)[1] is not None


def _jsonl_documents(domain: ResolvedDomain, path: Path,
                     tally: Optional[DecodeTally]) -> Iterator[str]:
    name, key = domain.spec.name, domain.spec.field
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise _unreadable(name, path, exc) from None
    with handle:
        # Bytes, not text mode: a bad byte names its line, and blank lines are the ones
        # count_documents skips.
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {line_number}"
            line = _decode(domain, raw, where, tally, is_file=False)
            if not line:
                yield ""  # skipped: keeps the positions of the held-out choice
                continue
            try:
                record = _parse_record(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"domain {name!r}: {where}: not valid JSON ({exc.msg})") from None
            except DuplicateKeyError as exc:
                raise InputError(f"domain {name!r}: {where}: {exc}") from None
            except RecursionError:
                raise InputError(f"domain {name!r}: {where}: nested too deeply") from None
            yield _text_field(record, key, f"domain {name!r}: {where}")


def _record_pairs(pairs: List[Tuple[str, object]]) -> dict:
    record = dict(pairs)  # C speed; JSONL reading is on the prepare hot path
    if len(record) < len(pairs):  # a key given twice: the last one would silently win
        seen: set = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKeyError(f"duplicate key {key!r}; a key may appear once per object")
    return record


# Built once: json.loads with any option builds a decoder per call, which doubles the cost
# of a short record. NaN is left as JSON-with-NaN writers put it: only the text field counts.
_RECORD_DECODER = json.JSONDecoder(object_pairs_hook=_record_pairs)


def _parse_record(line: str):
    if line.startswith("\ufeff"):  # json.loads refuses a BOM; so does this, alike
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", line, 0)
    return _RECORD_DECODER.decode(line)


def _text_field(record, key: str, where: str) -> str:
    if not isinstance(record, dict) or key not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise InputError(f"{where} has no field {key!r} (found: {fields}); choose the field with "
                         "--field")
    value = record[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} is {type(value).__name__}, not text")
    return value
