"""An offline multi-domain text corpus assembled from what every Python installation has.

The tests and the micro-benchmarks use it because it needs no download (the demo and the
quality benchmark use the larger registry corpus of ``builtin_corpus``): the domains are cut at run time
from the running interpreter's standard library (and, where present, the system's licence
texts). They differ clearly in style, which is what a data-mixing method needs to see:

- ``code``:       Python source files of the standard library;
- ``docstrings``: module, class and function docstrings (technical English prose);
- ``comments``:   ``#`` comments of each source file (terse, informal notes);
- ``reference``:  the Python language reference topics behind ``help()`` (long-form prose);
- ``licenses``:   licence texts under /usr/share (legal English; only when the system has them).

Each domain becomes a JSONL file of ``{"text": ...}`` documents, in a deterministic order.
"""

import ast
import io
import json
import logging
import sysconfig
import tokenize
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from ..atomic import atomic_write_text
from .samples import stable_hash
from .sources import DomainSpec

logger = logging.getLogger(__name__)

_SKIPPED_STDLIB_PARTS = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3",
                         "__pycache__", "turtledemo", "ensurepip"}
_LICENSE_DIRS = (Path("/usr/share/common-licenses"),)
_MIN_DOCUMENT_CHARS = 40


def stdlib_sources() -> List[Path]:
    """Standard-library sources in a fixed pseudo-random order.

    Ordered by a hash of the relative path, so a character budget samples the whole library
    instead of the alphabetically first packages, and every machine agrees on the order.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not _SKIPPED_STDLIB_PARTS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: stable_hash(p.relative_to(root).as_posix()))


def code_documents_by_file() -> Iterator[Tuple[str, str]]:
    """``(path relative to the standard library, source)`` of every kept source file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= _MIN_DOCUMENT_CHARS:
            yield path.relative_to(root).as_posix(), text


def _code_documents(files: List[Path]) -> Iterator[str]:
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) >= _MIN_DOCUMENT_CHARS:
            yield text


def _docstring_documents(files: List[Path]) -> Iterator[str]:
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= _MIN_DOCUMENT_CHARS:
                    yield doc


def _comment_documents(files: List[Path]) -> Iterator[str]:
    for path in files:
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            comments = [tok.string.lstrip("#").strip() for tok in
                        tokenize.generate_tokens(io.StringIO(source).readline)
                        if tok.type == tokenize.COMMENT]
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        text = "\n".join(c for c in comments if c and not c.startswith("!"))
        if len(text) >= _MIN_DOCUMENT_CHARS:
            yield text


def _reference_documents() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for name in sorted(topics):
        if len(topics[name]) >= _MIN_DOCUMENT_CHARS:
            yield topics[name]


def _license_documents() -> Iterator[str]:
    for directory in _LICENSE_DIRS:
        if directory.is_dir():
            for path in sorted(p for p in directory.iterdir() if p.is_file()):
                text = path.read_text(encoding="utf-8", errors="replace")
                if len(text) >= _MIN_DOCUMENT_CHARS:
                    yield text


def _take(documents: Iterator[str], max_chars: int) -> List[str]:
    taken, total = [], 0
    for text in documents:
        if total >= max_chars:
            break
        text = text[:max_chars - total]
        taken.append(text)
        total += len(text)
    return taken


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its mtime, so `prepare` sees unchanged inputs and skips work.
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    atomic_write_text(path, text)


def build_stdlib_corpus(out_dir, max_chars_per_domain: int = 2_000_000,
                         domains: Optional[List[str]] = None) -> List[DomainSpec]:
    """Write ``<out_dir>/<domain>.jsonl`` for each domain; return specs for ``prepare``."""
    out_dir = Path(out_dir)
    files = stdlib_sources()
    generators: Dict[str, Iterator[str]] = {
        "code": _code_documents(files), "docstrings": _docstring_documents(files),
        "comments": _comment_documents(files), "reference": _reference_documents(),
        "licenses": _license_documents(),
    }
    specs = []
    for name, documents in generators.items():
        if domains is not None and name not in domains:
            continue
        texts = _take(documents, max_chars_per_domain)
        if len(texts) < 2:
            logger.info("stdlib corpus: domain %r has too little text here, left out", name)
            continue
        path = out_dir / f"{name}.jsonl"
        _write_if_changed(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
        logger.info("stdlib corpus: %s: %d documents, %s characters", name, len(texts),
                    f"{sum(map(len, texts)):,}")
        specs.append(DomainSpec(name, [str(path)]))
    return specs
