"""Tokenizers for ``autoscale prepare``: a locally trained SentencePiece model, or a local
SentencePiece / Hugging Face tokenizer. Nothing is ever downloaded.

Every tokenizer exposes the same small surface: ``encode_batch``, ``vocab_size``,
``eod_id`` (appended after each document, as Megatron's ``--append-eod`` does), and a
``spec`` that worker processes use to load their own copy.
"""

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from ..atomic import atomic_write_bytes
from ..errors import InputError
from ..loaders import DuplicateKeyError, json_error_line, loads_json

logger = logging.getLogger(__name__)

# End-of-document candidates for Hugging Face tokenizers, most specific first.
_HF_EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to load the tokenizer (picklable)."""

    kind: str
    """"sentencepiece" or "hf"."""
    path: str
    eod_token: Optional[str] = None


class Tokenizer:
    """Common surface of the tokenizers below."""

    spec: TokenizerSpec
    vocab_size: int
    eod_id: int
    threads: int = -1
    """Threads one ``encode_batch`` may use (-1: the library's choice)."""

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer's files: a changed tokenizer invalidates prepared data."""
        return _digest_path(Path(self.spec.path))

    def describe(self) -> dict:
        return {"kind": self.spec.kind, "path": self.spec.path, "vocab_size": self.vocab_size,
                "eod_id": self.eod_id, "sha256": self.fingerprint()}


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, spec: TokenizerSpec):
        import sentencepiece

        try:
            self._model = sentencepiece.SentencePieceProcessor(model_file=spec.path)
        except (OSError, RuntimeError) as exc:
            raise InputError(f"cannot load SentencePiece model {spec.path}: {exc}") from None
        self.spec = spec
        self.vocab_size = int(self._model.get_piece_size())
        self.eod_id = self._eod(spec)

    def _eod(self, spec: TokenizerSpec) -> int:
        if spec.eod_token is None:
            if self._model.eos_id() < 0:
                raise InputError(f"SentencePiece model {spec.path} has no end-of-sentence id; "
                                 "pass --eod-token")
            return int(self._model.eos_id())
        piece_id = self._model.piece_to_id(spec.eod_token)
        if piece_id == self._model.unk_id() and spec.eod_token != self._model.id_to_piece(piece_id):
            raise InputError(f"--eod-token {spec.eod_token!r} is not in {spec.path}")
        return int(piece_id)

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        # -1: SentencePiece spreads a batch over all cores; worker processes set 1.
        return self._model.encode(texts, num_threads=self.threads)


class HFTokenizer(Tokenizer):
    """A local Hugging Face tokenizer directory (``tokenizer.json``) or file."""

    def __init__(self, spec: TokenizerSpec):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(spec.path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise InputError(f"no tokenizer.json in {spec.path}: give a local Hugging Face "
                             "tokenizer directory saved with save_pretrained / tokenizer.save")
        try:
            self._tokenizer = RustTokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises plain Exception subclasses
            raise InputError(f"cannot load Hugging Face tokenizer {file}: {exc}") from None
        self.spec = spec
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        self.eod_id = self._eod(spec, path)

    def _eod(self, spec: TokenizerSpec, path: Path) -> int:
        candidates = [spec.eod_token] if spec.eod_token else [*_configured_eos(path), *_HF_EOD_CANDIDATES]
        for token in candidates:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        raise InputError(f"Hugging Face tokenizer {spec.path} has none of the end-of-document "
                         f"tokens {candidates}; pass --eod-token")

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


def _configured_eos(path: Path) -> List[str]:
    config = path / "tokenizer_config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        return []
    try:
        settings = loads_json(config.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:  # e.g. two eos_token: which one ends a document?
        raise InputError(f"Hugging Face tokenizer config {json_error_line(exc, str(config))}") from None
    except (OSError, ValueError, RecursionError) as exc:
        logger.warning("ignoring unreadable %s (%s); looking for a known end-of-document "
                       "token instead", config, exc)
        return []
    eos = settings.get("eos_token") if isinstance(settings, dict) else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return [eos] if isinstance(eos, str) else []


def load_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    if spec.kind == "sentencepiece":
        return SentencePieceTokenizer(spec)
    if spec.kind == "hf":
        return HFTokenizer(spec)
    raise InputError(f"unknown tokenizer kind {spec.kind!r}; use 'sentencepiece' or 'hf'")


def spec_for_path(path: str, eod_token: Optional[str] = None) -> TokenizerSpec:
    """Guess the kind from what is on disk: a directory or .json is Hugging Face."""
    candidate = Path(path)
    if not candidate.exists():
        raise InputError(f"tokenizer {path} does not exist (only local tokenizers are supported)")
    kind = "hf" if candidate.is_dir() or candidate.suffix == ".json" else "sentencepiece"
    return TokenizerSpec(kind, str(candidate), eod_token)


def train_sentencepiece(lines: Iterable[str], vocab_size: int, model_path: Path) -> TokenizerSpec:
    """Train a byte-fallback BPE model that round-trips text exactly (code included)."""
    import sentencepiece

    sentences = list(_nonempty(lines))
    if not sentences:
        raise InputError("no text to train the tokenizer on: every sampled document is empty")
    buffer = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, byte_fallback=True,
            # Identity normalisation and kept whitespace: indentation is meaning in code.
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            user_defined_symbols=["\n", "\t"], hard_vocab_limit=False,
            # Fixed input order, no sampling, one thread (the thread count is stored in the
            # model): the same corpus gives the same model bytes on any machine.
            shuffle_input_sentence=False, num_threads=1, minloglevel=2,
        )
    except RuntimeError as exc:
        raise InputError(f"SentencePiece training failed (vocab size {vocab_size}): {exc}") from None
    atomic_write_bytes(model_path, buffer.getvalue())
    return TokenizerSpec("sentencepiece", str(model_path))


def _nonempty(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if line.strip():
            yield line


def _digest_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
