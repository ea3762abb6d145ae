"""Where a domain's raw documents come from, read in one deterministic order.

A source is a file, a directory (all files below it, sorted), or a glob. By suffix:
``.jsonl`` gives one document per line (a chosen field), ``.parquet`` and ``.arrow`` one
per row, a directory saved by Hugging Face ``datasets.save_to_disk`` one per row of its
Arrow files, and anything else is plain text, one document per file. Binary files found
while walking a directory are skipped with a count in the log.
"""

import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from ..errors import InputError

logger = logging.getLogger(__name__)

_BINARY_PROBE_BYTES = 8192
_TABLE_SUFFIXES = (".parquet", ".arrow")


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


@dataclass
class ResolvedDomain:
    spec: DomainSpec
    files: List[Path] = field(default_factory=list)
    valid_files: Optional[List[Path]] = None
    """The explicit validation files, when the spec names them."""

    def fingerprint(self) -> str:
        """Changes when any input file is added, removed, resized or touched, or the field."""
        digest = hashlib.sha256(self.spec.field.encode())
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
    stat = path.stat()
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()


def resolve(spec: DomainSpec) -> ResolvedDomain:
    """Expand every source of a domain into files; problems name the domain and source."""
    if not spec.sources:
        raise InputError(f"domain {spec.name!r} has no sources")
    files: List[Path] = []
    for source in spec.sources:
        files.extend(_expand(spec.name, source))
    valid_files = None
    if spec.valid_sources is not None:
        if not spec.valid_sources:
            raise InputError(f"domain {spec.name!r} has an empty list of validation sources")
        valid_files = list(dict.fromkeys(p for s in spec.valid_sources
                                         for p in _expand(spec.name, s)))
    return ResolvedDomain(spec, list(dict.fromkeys(files)), valid_files)


def _expand(domain: str, source: str) -> List[Path]:
    path = Path(source)
    if path.is_dir():
        if _is_saved_dataset(path):
            return [path]
        return _text_files_under(domain, path)
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise InputError(f"domain {domain!r}: source {source!r} is not a file or directory and "
                         "matches no files")
    return files


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def _text_files_under(domain: str, directory: Path) -> List[Path]:
    files, skipped = [], 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue  # .git, .cache and friends are never documents
        if path.suffix in (".jsonl", *_TABLE_SUFFIXES) or not _looks_binary(path):
            files.append(path)
        else:
            skipped += 1
    if skipped:
        logger.info("domain %r: skipped %d binary file(s) under %s", domain, skipped, directory)
    if not files:
        raise InputError(f"domain {domain!r}: directory {directory} holds no text files")
    return files


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as handle:
        return b"\0" in handle.read(_BINARY_PROBE_BYTES)


# ------------------------------------------------------------------------- reading


def count_documents(domain: ResolvedDomain) -> int:
    return sum(_count_in_file(domain, path) for path in domain.files)


def iter_documents(domain: ResolvedDomain) -> Iterator[str]:
    """Every document of the domain as text, in a fixed order."""
    for path in domain.files:
        yield from _documents_in_file(domain, path)


def _count_in_file(domain: ResolvedDomain, path: Path) -> int:
    if path.is_dir() or path.suffix in _TABLE_SUFFIXES:
        return sum(batch.num_rows for batch in _arrow_batches(domain, path))
    if path.suffix == ".jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return 1


def _documents_in_file(domain: ResolvedDomain, path: Path) -> Iterator[str]:
    if path.is_dir() or path.suffix in _TABLE_SUFFIXES:
        yield from _table_documents(domain, path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_documents(domain, path)
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def _jsonl_documents(domain: ResolvedDomain, path: Path) -> Iterator[str]:
    name, key = domain.spec.name, domain.spec.field
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"domain {name!r}: {path} line {line_number}: not valid JSON "
                                 f"({exc.msg})") from None
            yield _text_field(record, key, f"domain {name!r}: {path} line {line_number}")


def _text_field(record, key: str, where: str) -> str:
    if not isinstance(record, dict) or key not in record:
        fields = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise InputError(f"{where} has no field {key!r} (found: {fields}); choose the field with "
                         "--field")
    value = record[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} is {type(value).__name__}, not text")
    return value


def _table_documents(domain: ResolvedDomain, path: Path) -> Iterator[str]:
    key = domain.spec.field
    for batch in _arrow_batches(domain, path):
        if key not in batch.schema.names:
            raise InputError(f"domain {domain.spec.name!r}: {path} has no column {key!r} "
                             f"(columns: {batch.schema.names}); choose it with --field")
        for value in batch.column(key).to_pylist():
            if not isinstance(value, str):
                raise InputError(f"domain {domain.spec.name!r}: {path}: column {key!r} holds "
                                 f"{type(value).__name__}, not text")
            yield value


def _arrow_batches(domain: ResolvedDomain, path: Path):
    try:
        import pyarrow  # noqa: F401  (optional: the `data` extra)
    except ImportError:
        raise InputError(f"reading {path} needs pyarrow: pip install 'autoscale-ds[data]'") from None
    try:
        yield from _read_arrow(path)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise InputError(f"domain {domain.spec.name!r}: cannot read {path}: {exc}") from None


def _read_arrow(path: Path):
    import pyarrow.ipc
    import pyarrow.parquet

    if path.suffix == ".parquet":
        yield from pyarrow.parquet.ParquetFile(path).iter_batches()
        return
    files = _saved_dataset_files(path) if path.is_dir() else [path]
    for file in files:
        yield from _arrow_file_batches(file)


def _saved_dataset_files(directory: Path) -> Sequence[Path]:
    state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    return [directory / entry["filename"] for entry in state.get("_data_files", [])]


def _arrow_file_batches(file: Path):
    import pyarrow.ipc

    # `datasets` writes the streaming IPC format; other tools write the random-access one.
    try:
        reader = pyarrow.ipc.open_stream(pyarrow.memory_map(str(file)))
        yield from reader
    except pyarrow.ArrowInvalid:
        reader = pyarrow.ipc.open_file(pyarrow.memory_map(str(file)))
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
