"""Token stores in Megatron's indexed format: ``prefix.bin`` (tokens) + ``prefix.idx`` (index).

Byte-compatible with megatron-core's ``IndexedDataset`` / ``IndexedDatasetBuilder``: data made
by Megatron's ``preprocess_data.py`` is read unchanged, and our stores train in Megatron.
The ``.idx`` file, all little-endian::

    magic b"MMIDIDX\\x00\\x00" | version u64 = 1 | dtype code u8 | S u64 | D u64
    sequence lengths int32[S] | byte offset of each sequence in .bin int64[S]
    document indices int64[D]   (D = documents + 1: starts at 0, ends at S)
    sequence modes int8[S]      (multimodal stores only; no flag: known from the file size)

The ``.bin`` file is the tokens of all sequences back to back, in the dtype, with no header.
We write one sequence per document, as Megatron's text preprocessing does.
"""

import array
import logging
import os
import shutil
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterable, Optional, Tuple, Type, Union

import numpy as np
from numpy.typing import ArrayLike

from ..atomic import _fsync_directory
from ..errors import InputError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# magic, version, dtype code, sequence count, document-index count: 34 bytes, no padding.
_HEADER = struct.Struct("<9sQBQQ")
# Megatron's DType enum: the code stored in the header for each element type.
DTYPE_NAMES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64",
               6: "float64", 7: "float32", 8: "uint16"}
_DTYPE_CODES = {name: code for code, name in DTYPE_NAMES.items()}
# Megatron's DType.optimal_dtype switches below 2**16; the same cut keeps our choice identical.
_UINT16_VOCAB_LIMIT = 65500
_COPY_CHUNK_BYTES = 16 << 20
REBUILD_HINT = "re-run `autoscale prepare`"


class CorruptDataError(InputError):
    """A ``.bin``/``.idx`` pair is missing, damaged or inconsistent; the message names the file."""


def optimal_token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab below 65,500, as Megatron decides), else int32."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or vocab_size < 1:
        raise InputError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    return np.dtype(np.uint16 if vocab_size < _UINT16_VOCAB_LIMIT else np.int32)


def store_paths(prefix: PathLike) -> Tuple[Path, Path]:
    """``(prefix.bin, prefix.idx)``: the suffix is appended, as Megatron does, never replaced."""
    text = os.fspath(prefix)
    return Path(text + ".bin"), Path(text + ".idx")


def _writable_dtype(dtype: object) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise InputError(f"token dtype {dtype!r} is not a numpy dtype") from None
    if resolved.kind not in "iu" or resolved.name not in _DTYPE_CODES:
        allowed = sorted(n for n in _DTYPE_CODES if not n.startswith("float"))
        raise InputError(f"token dtype {resolved.name} cannot be stored; use one of {allowed}")
    return np.dtype(resolved.name).newbyteorder("<")


def _temp_next_to(path: Path) -> Path:
    # Same directory as the target, so the final rename is atomic. open(.., "xb") rather than
    # mkstemp: the store gets the umask's permissions, not 0600 that would hide it from a
    # training job running as another user.
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(candidate, "xb"):
                return candidate
        except FileExistsError:
            continue


class IndexedTokenWriter:
    """Stream documents into ``prefix.bin``/``prefix.idx``; the files appear only at finalize.

    Tokens go straight to a temp file; only 16 bytes per document (length, boundary) stay in
    memory. A clean ``with`` exit finalizes, an exception removes the temp files.
    """

    def __init__(self, prefix: PathLike, dtype: object) -> None:
        self.prefix = os.fspath(prefix)
        self.dtype = _writable_dtype(dtype)
        self._limits = np.iinfo(self.dtype)
        self._bin_path, self._idx_path = store_paths(self.prefix)
        self._bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._temp_bin = _temp_next_to(self._bin_path)
        self._temp_idx = self._temp_bin  # until its own temp exists, cleanup has one file
        try:
            self._temp_idx = _temp_next_to(self._idx_path)
            self._bin_file = open(self._temp_bin, "wb")
        except BaseException:
            self._remove_temps()
            raise
        self._sequence_lengths = array.array("q")
        self._document_indices = array.array("q", [0])
        self._done = False

    def __enter__(self) -> "IndexedTokenWriter":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self._commit()

    @property
    def num_documents(self) -> int:
        return len(self._document_indices) - 1

    def add_document(self, tokens: ArrayLike) -> None:
        """Append one document (one sequence); ids must fit the dtype, else ``InputError``."""
        self._check_writable()
        values = self._as_tokens(tokens)
        self._bin_file.write(np.ascontiguousarray(values).data)
        self._sequence_lengths.append(values.size)
        self._document_indices.append(len(self._sequence_lengths))

    def finalize(self) -> "IndexedTokenStore":
        """Write the index, move ``.bin`` then ``.idx`` into place, and open the result."""
        self._commit()
        return IndexedTokenStore(self.prefix)

    def abort(self) -> None:
        """Drop everything written so far; the target files are left as they were."""
        if self._done:
            return
        self._done = True
        self._bin_file.close()
        self._remove_temps()
        logger.info("aborted token store %s: temp files removed, targets untouched", self.prefix)

    def _as_tokens(self, tokens: ArrayLike) -> np.ndarray:
        where = f"{self.prefix}: document {self.num_documents:,}"
        try:
            values = np.asarray(tokens)
        except (OverflowError, ValueError, TypeError) as exc:
            raise InputError(f"{where}: not an array of token ids ({exc})") from None
        if values.ndim != 1:
            raise InputError(f"{where}: token ids must be one-dimensional, got shape {values.shape}")
        if values.size == 0:
            return np.empty(0, self.dtype)
        if values.dtype.kind not in "iu":
            raise InputError(f"{where}: token ids must be integers, got {values.dtype} values")
        if values.size > np.iinfo(np.int32).max:
            raise InputError(f"{where}: {values.size:,} tokens; the format caps a sequence "
                             f"at {np.iinfo(np.int32).max:,}")
        for value in (int(values.min()), int(values.max())):
            if not self._limits.min <= value <= self._limits.max:
                raise InputError(
                    f"{where}: token id {value:,} is outside {self.dtype.name} "
                    f"[{self._limits.min:,}, {self._limits.max:,}]; use a wider dtype "
                    f"(optimal_token_dtype(vocab_size)) or check the tokenizer")
        return values.astype(self.dtype, copy=False)

    def _append_store(self, store: "IndexedTokenStore") -> None:
        # Megatron's add_index: shift the other store's boundaries, then copy its bytes.
        self._check_writable()
        offset = len(self._sequence_lengths)
        self._sequence_lengths.frombytes(store.sequence_lengths.astype(np.int64).tobytes())
        shifted = store.document_indices[1:].astype(np.int64) + offset
        self._document_indices.frombytes(shifted.tobytes())
        with open(store.bin_path, "rb") as source:
            shutil.copyfileobj(source, self._bin_file, _COPY_CHUNK_BYTES)

    def _check_writable(self) -> None:
        if self._done:
            raise ValueError(f"token store writer {self.prefix}: already finalized or aborted")

    def _commit(self) -> None:
        self._check_writable()
        self._done = True
        try:
            self._bin_file.flush()
            os.fsync(self._bin_file.fileno())
            self._bin_file.close()
            self._write_index()
            # .bin first, .idx last: whoever finds the new index also finds its data.
            os.replace(self._temp_bin, self._bin_path)
            os.replace(self._temp_idx, self._idx_path)
        except BaseException:
            self._bin_file.close()
            self._remove_temps()
            raise
        _fsync_directory(self._bin_path.parent)
        logger.info("wrote token store %s: %s documents, %s", self.prefix,
                    f"{self.num_documents:,}", self.dtype.name)

    def _write_index(self) -> None:
        lengths = np.frombuffer(self._sequence_lengths, dtype=np.int64)
        pointers = np.zeros(lengths.size, dtype="<i8")
        pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * self.dtype.itemsize
        document_indices = np.frombuffer(self._document_indices, dtype=np.int64)
        header = _HEADER.pack(MAGIC, VERSION, _DTYPE_CODES[self.dtype.name], lengths.size,
                              document_indices.size)
        with open(self._temp_idx, "wb") as out:
            out.write(header)
            out.write(lengths.astype("<i4").tobytes())
            out.write(pointers.tobytes())
            out.write(document_indices.astype("<i8").tobytes())
            out.flush()
            os.fsync(out.fileno())

    def _remove_temps(self) -> None:
        for path in (self._temp_bin, self._temp_idx):
            path.unlink(missing_ok=True)


@dataclass
class _Arrays:
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray
    sequence_modes: Optional[np.ndarray]
    tokens: np.ndarray


class IndexedTokenStore:
    """A validated, memory-mapped ``prefix.bin``/``prefix.idx`` pair; ``store[i]`` is a view."""

    def __init__(self, prefix: PathLike) -> None:
        self.prefix = os.fspath(prefix)
        self.bin_path, self.idx_path = store_paths(self.prefix)
        self._require_files()
        dtype, lengths, pointers, document_indices, modes = _read_index(self.idx_path)
        _check_index(self.idx_path, dtype, lengths, pointers, document_indices)
        self._dtype = dtype
        self._num_tokens = int(lengths.sum(dtype=np.int64))
        tokens = _map_tokens(self.bin_path, dtype, self._num_tokens)
        self._arrays: Optional[_Arrays] = _Arrays(lengths, pointers, document_indices, modes,
                                                  tokens)

    def _require_files(self) -> None:
        missing = [p for p in (self.idx_path, self.bin_path) if not p.is_file()]
        if missing:
            hint = (" (pass the prefix without .bin/.idx)"
                    if self.prefix.endswith((".bin", ".idx")) else "")
            raise CorruptDataError(f"{missing[0]}: file not found; a token store needs both "
                                   f"{self.bin_path.name} and {self.idx_path.name}{hint}")

    def _live(self) -> _Arrays:
        if self._arrays is None:
            raise ValueError(f"token store {self.prefix} is closed")
        return self._arrays

    def __enter__(self) -> "IndexedTokenStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        # Drop our references rather than closing the mmap: views already handed out keep
        # the mapping alive and stay valid; the OS unmaps when the last one is gone.
        self._arrays = None

    def __len__(self) -> int:
        return int(self._live().sequence_lengths.size)

    def __getitem__(self, index: int) -> np.ndarray:
        arrays = self._live()
        position = self._position(index, arrays.sequence_lengths.size)
        start = int(arrays.sequence_pointers[position]) // self._dtype.itemsize
        return arrays.tokens[start:start + int(arrays.sequence_lengths[position])]

    def get(self, index: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens ``offset .. offset+length`` of sequence ``index`` (to its end by default)."""
        sequence = self[index]
        if length is None:
            length = sequence.size - offset
        if not 0 <= offset <= sequence.size or not 0 <= length <= sequence.size - offset:
            raise IndexError(f"token store {self.prefix}: sequence {index} has {sequence.size:,} "
                             f"tokens; cannot take {length} from offset {offset}")
        return sequence[offset:offset + length]

    def _position(self, index: int, count: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"sequence index must be an integer, got {type(index).__name__}")
        position = int(index) + count if index < 0 else int(index)
        if not 0 <= position < count:
            raise IndexError(f"token store {self.prefix}: sequence {index} out of range "
                             f"(it has {count:,} sequences)")
        return position

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def sequence_lengths(self) -> np.ndarray:
        return self._live().sequence_lengths

    @property
    def document_indices(self) -> np.ndarray:
        return self._live().document_indices

    @property
    def sequence_modes(self) -> Optional[np.ndarray]:
        """Megatron's multimodal mode per sequence, or None for a text store."""
        return self._live().sequence_modes

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    @property
    def num_documents(self) -> int:
        return int(self._live().document_indices.size) - 1

    def tokens_view(self) -> np.ndarray:
        """The whole ``.bin`` as one read-only array, for slicing across sequence boundaries."""
        return self._live().tokens

    def token_id_range(self) -> Tuple[int, int]:
        """(smallest, largest) token id in the store, (0, -1) when it is empty. One pass
        over the memory map in fixed-size chunks (memory stays flat for any store size),
        remembered per file and modification, so a sweep's many runs read it once."""
        stat = self.bin_path.stat()
        key = (str(self.bin_path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _ID_RANGE_CACHE:
            _ID_RANGE_CACHE[key] = _scan_id_range(self.tokens_view())
        return _ID_RANGE_CACHE[key]

    def __repr__(self) -> str:
        if self._arrays is None:
            return f"IndexedTokenStore({self.prefix!r}, closed)"
        return (f"IndexedTokenStore({self.prefix!r}, dtype={self._dtype.name}, "
                f"sequences={len(self):,}, documents={self.num_documents:,}, "
                f"tokens={self._num_tokens:,})")


_ID_RANGE_CACHE: dict = {}
_ID_SCAN_CHUNK_TOKENS = 1 << 24


def _scan_id_range(tokens: np.ndarray) -> Tuple[int, int]:
    if tokens.size == 0:
        return 0, -1
    low, high = None, None
    for start in range(0, tokens.size, _ID_SCAN_CHUNK_TOKENS):
        chunk = tokens[start:start + _ID_SCAN_CHUNK_TOKENS]
        chunk_low, chunk_high = int(chunk.min()), int(chunk.max())
        low = chunk_low if low is None else min(low, chunk_low)
        high = chunk_high if high is None else max(high, chunk_high)
    return low, high


def _read_index(path: Path) -> Tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray,
                                     Optional[np.ndarray]]:
    size_bytes = path.stat().st_size
    if size_bytes < _HEADER.size:
        raise CorruptDataError(f"{path}: {size_bytes:,} bytes, shorter than the "
                               f"{_HEADER.size}-byte header; the .idx is truncated — {REBUILD_HINT}")
    with open(path, "rb") as stream:
        magic, version, code, num_sequences, num_indices = _HEADER.unpack(stream.read(_HEADER.size))
    if magic != MAGIC:
        raise CorruptDataError(f"{path}: starts with {magic!r}, not the Megatron index magic "
                               f"{MAGIC!r}; this is not a .idx file")
    if version != VERSION:
        raise CorruptDataError(f"{path}: index format version {version:,}; only version "
                               f"{VERSION} is supported")
    if code not in DTYPE_NAMES:
        raise CorruptDataError(f"{path}: unknown dtype code {code}; Megatron defines codes "
                               f"1-8 ({', '.join(f'{c}={n}' for c, n in DTYPE_NAMES.items())})")
    # 4 + 8 bytes per sequence (length, pointer), 8 per document index, then optional modes.
    needed_bytes = _HEADER.size + 12 * num_sequences + 8 * num_indices
    if size_bytes < needed_bytes:
        raise CorruptDataError(
            f"{path}: {size_bytes:,} bytes but its header declares {num_sequences:,} sequences "
            f"and {num_indices:,} document indices, which need {needed_bytes:,} bytes; the .idx "
            f"is truncated — {REBUILD_HINT}")
    extra_bytes = size_bytes - needed_bytes
    if extra_bytes not in (0, num_sequences):
        raise CorruptDataError(
            f"{path}: {extra_bytes:,} bytes after the document indices; expected 0 or "
            f"{num_sequences:,} (one multimodal mode byte per sequence) — {REBUILD_HINT}")
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    lengths = np.frombuffer(buffer, "<i4", num_sequences, _HEADER.size)
    offset = _HEADER.size + lengths.nbytes
    pointers = np.frombuffer(buffer, "<i8", num_sequences, offset)
    document_indices = np.frombuffer(buffer, "<i8", num_indices, offset + pointers.nbytes)
    modes = None
    if extra_bytes and num_sequences:
        modes = np.frombuffer(buffer, np.int8, num_sequences, needed_bytes)
    dtype = np.dtype(DTYPE_NAMES[code]).newbyteorder("<")
    return dtype, lengths, pointers, document_indices, modes


def _check_index(path: Path, dtype: np.dtype, lengths: np.ndarray, pointers: np.ndarray,
                 document_indices: np.ndarray) -> None:
    negative = np.flatnonzero(lengths < 0)
    if negative.size:
        first = int(negative[0])
        raise CorruptDataError(f"{path}: sequence {first:,} has negative length "
                               f"{int(lengths[first]):,} — {REBUILD_HINT}")
    expected = np.zeros(lengths.size, dtype=np.int64)
    expected[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * dtype.itemsize
    wrong = np.flatnonzero(pointers != expected)
    if wrong.size:
        first = int(wrong[0])
        raise CorruptDataError(
            f"{path}: sequence {first:,} starts at byte {int(pointers[first]):,} but the lengths "
            f"before it ({dtype.name}) put it at byte {int(expected[first]):,} — {REBUILD_HINT}")
    _check_document_indices(path, document_indices, lengths.size)


def _check_document_indices(path: Path, document_indices: np.ndarray, num_sequences: int) -> None:
    if document_indices.size == 0 or document_indices[0] != 0:
        first = "none" if document_indices.size == 0 else f"{int(document_indices[0]):,}"
        raise CorruptDataError(f"{path}: document indices must start with 0, first is {first}"
                               f" — {REBUILD_HINT}")
    # Equal neighbours (a document of no sequences) are legal in Megatron; a decrease is not.
    decreasing = np.flatnonzero(np.diff(document_indices) < 0)
    if decreasing.size:
        k = int(decreasing[0])
        raise CorruptDataError(
            f"{path}: document indices decrease at position {k + 1:,} "
            f"({int(document_indices[k]):,} then {int(document_indices[k + 1]):,}) — {REBUILD_HINT}")
    if document_indices[-1] != num_sequences:
        raise CorruptDataError(
            f"{path}: document indices end at {int(document_indices[-1]):,} but the index has "
            f"{num_sequences:,} sequences — {REBUILD_HINT}")


def _map_tokens(path: Path, dtype: np.dtype, num_tokens: int) -> np.ndarray:
    size_bytes = path.stat().st_size
    expected_bytes = num_tokens * dtype.itemsize
    if size_bytes != expected_bytes:
        raise CorruptDataError(
            f"{path}: {size_bytes:,} bytes but the index describes {expected_bytes:,} bytes "
            f"({num_tokens:,} tokens of {dtype.name}); the .bin is truncated or belongs to "
            f"another index — {REBUILD_HINT}")
    if num_tokens == 0:
        empty = np.empty(0, dtype)  # mmap cannot map an empty file
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(num_tokens,))


def build_store(prefix: PathLike, documents: Iterable[ArrayLike],
                dtype: object) -> IndexedTokenStore:
    """Write every document of ``documents`` (streamed) into a new store and open it."""
    with IndexedTokenWriter(prefix, dtype) as writer:
        for document in documents:
            writer.add_document(document)
        return writer.finalize()


def merge_stores(out_prefix: PathLike, prefixes: Iterable[PathLike]) -> IndexedTokenStore:
    """Concatenate stores of one dtype, in order (Megatron's ``add_index``), e.g. worker shards."""
    prefixes = [os.fspath(p) for p in prefixes]
    if not prefixes:
        raise InputError(f"merge into {out_prefix}: no input token stores given")
    out_abs = os.path.abspath(os.fspath(out_prefix))
    if any(os.path.abspath(p) == out_abs for p in prefixes):
        raise InputError(f"merge into {out_prefix}: the output is also an input; choose a new prefix")
    with IndexedTokenStore(prefixes[0]) as first:
        dtype = first.dtype
    with IndexedTokenWriter(out_prefix, dtype) as writer:
        for prefix in prefixes:
            with IndexedTokenStore(prefix) as store:
                _check_mergeable(store, dtype, prefixes[0])
                writer._append_store(store)
        return writer.finalize()


def _check_mergeable(store: IndexedTokenStore, dtype: np.dtype, first_prefix: str) -> None:
    if store.dtype != dtype:
        raise InputError(f"cannot merge token store {store.prefix} ({store.dtype.name}) with "
                         f"{first_prefix} ({dtype.name}); re-tokenise with one dtype")
    if store.sequence_modes is not None:
        raise InputError(f"cannot merge token store {store.prefix}: it is multimodal "
                         f"(has sequence modes), which merge_stores does not carry")


def open_domain_store(manifest, domain: str, split: str = "train") -> "IndexedTokenStore":
    """The token store of one split of a prepared domain (``manifest``: a
    formats.manifest.Manifest), checked as it opens."""
    return IndexedTokenStore(str(manifest.prefix(domain, split)))
