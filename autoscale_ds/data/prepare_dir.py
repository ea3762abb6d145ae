"""The output directory of ``autoscale prepare``: one writer, nothing foreign overwritten.

- A ``DirectoryLock`` (``<out>/.lock``) is held for the whole run: a second ``prepare`` on
  the same directory stops with a clear message instead of racing the first for the
  manifest.
- ``<out>/.autoscale-prepare.json`` records every path prepare wrote or is about to write
  here (store prefixes, the trained tokenizer), claimed *before* writing. A file at a path
  prepare would write that is neither in this record nor in our manifest belongs to someone
  else: the run refuses to replace it unless told to (``--overwrite``). The record, unlike
  the manifest, survives a run killed between writing a store and listing it.
- Temp files that a killed run left (``.NAME.XXXXXXXX.tmp`` beside each file prepare
  writes) are removed by the next run, under the lock, so no writer owns them.
"""

import contextlib
import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Set

from ..atomic import atomic_write_json, stale_temp_files
from ..errors import InputError
from ..loaders import DuplicateKeyError, json_error_line, loads_json
from ..lock import DirectoryLock

logger = logging.getLogger(__name__)

OWNED_FILE = ".autoscale-prepare.json"
OWNED_SCHEMA = "autoscale.prepare-owned/v1"
MANIFEST_FILE = "manifest.yaml"
TOKENIZER_FILE = "tokenizer/tokenizer.model"
TOKENIZER_STAMP = "tokenizer/tokenizer.training.json"
SPLITS = ("train", "valid")
STORE_SUFFIXES = (".bin", ".idx")


def store_prefix(domain: str, split: str) -> str:
    """Where a domain's split lives, relative to the output directory."""
    return f"{domain}/{split}_text_document"


def store_files(prefix: str) -> List[str]:
    return [prefix + suffix for suffix in STORE_SUFFIXES]


def check_out_dir(root: Path) -> None:
    """Create ``root``; an unusable path is the user's to fix, not a traceback."""
    if root.exists() and not root.is_dir():
        raise InputError(f"--out-dir {root} is a file, not a directory; choose a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out-dir {root}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def output_errors(root: Path) -> Iterator[None]:
    """An ``OSError`` while preparing (read-only or full disk, a file turned unreadable)
    becomes one line naming the file."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or root
        raise InputError(f"autoscale prepare into {root}: {where}: {exc.strerror or exc}") from None


class OutDir:
    """The locked output directory and its record of what prepare owns there."""

    def __init__(self, root: Path):
        self.root = root
        self._owned = self._read_owned()

    def _read_owned(self) -> Set[str]:
        path = self.root / OWNED_FILE
        try:
            payload = loads_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except DuplicateKeyError as exc:
            # Ignoring it, like damage, would be safe; but this is a hand edit that half
            # worked (the last "paths" would win), so ask which one was meant.
            raise InputError(f"record of the files autoscale prepare wrote "
                             f"{json_error_line(exc, str(path))}; fix it, or delete it (prepare "
                             "then takes only the files its manifest lists as its own)") from None
        except (OSError, ValueError, RecursionError) as exc:
            # Written atomically, so only a hand edit damages it; the manifest still counts.
            logger.warning("ignoring unreadable %s (%s)", path, exc)
            return set()
        if not isinstance(payload, dict) or payload.get("schema") != OWNED_SCHEMA:
            return set()
        return {str(p) for p in payload.get("paths", [])}

    def owns(self, relative: str) -> bool:
        return relative in self._owned

    def claim(self, paths: Iterable[str]) -> None:
        """Record ``paths`` as ours before writing them (a crash then leaves them ours)."""
        new = set(paths) - self._owned
        if new:
            self._owned |= new
            self._save()

    def disown(self, paths: Iterable[str]) -> None:
        gone = self._owned & set(paths)
        if gone:
            self._owned -= gone
            self._save()

    def owned_stores(self) -> List[str]:
        return sorted(p for p in self._owned if p.endswith(STORE_SUFFIXES))

    def _save(self) -> None:
        atomic_write_json(self.root / OWNED_FILE,
                          {"schema": OWNED_SCHEMA, "paths": sorted(self._owned)})

    def refuse_foreign(self, targets: Iterable[str], ours: Set[str], overwrite: bool) -> None:
        """Stop before replacing a file at one of ``targets`` that is not ours."""
        foreign = [t for t in targets
                   if (self.root / t).exists() and t not in ours and not self.owns(t)]
        if not foreign:
            return
        if overwrite:
            logger.warning("--overwrite: replacing %d file(s) that autoscale prepare did not "
                           "write in %s: %s", len(foreign), self.root, foreign)
            return
        shown = ", ".join(str(self.root / t) for t in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise InputError(f"--out-dir {self.root} already holds {shown}{more}, not written by "
                         "autoscale prepare, which this run would replace; choose another "
                         "--out-dir, move them away, or pass --overwrite to replace them")

    def remove_stale_temps(self) -> None:
        removed = [tmp for target in self._writable_targets() for tmp in stale_temp_files(target)]
        size = 0
        for tmp in removed:
            size += tmp.stat().st_size
            tmp.unlink()
        if removed:
            logger.info("removed %d temp file(s) (%.1f MB) left in %s by an interrupted run",
                        len(removed), size / 1e6, self.root)

    def _writable_targets(self) -> Iterator[Path]:
        """Every file prepare writes with a temp file beside it."""
        for relative in (MANIFEST_FILE, OWNED_FILE, TOKENIZER_FILE, TOKENIZER_STAMP):
            yield self.root / relative
        # Domain names hold no "/": every store is one level below the root.
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for split in SPLITS:
                for name in store_files(store_prefix(sub.name, split)):
                    yield self.root / name

    def remove_stores(self, relatives: Iterable[str]) -> None:
        """Delete store files of ours (dropped domains), then their now-empty folders."""
        relatives = list(relatives)
        for relative in relatives:
            (self.root / relative).unlink(missing_ok=True)
        for folder in sorted({(self.root / r).parent for r in relatives}):
            if folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        self.disown(relatives)


@contextlib.contextmanager
def locked_out_dir(root: Path) -> Iterator[OutDir]:
    """The output directory, created and locked for the ``with`` block."""
    check_out_dir(root)
    lock = DirectoryLock(root)
    try:
        lock.acquire()
    except OSError as exc:
        raise InputError(f"cannot write to --out-dir {root}: {exc.strerror or exc}") from None
    try:
        with output_errors(root):
            yield OutDir(root)
    finally:
        lock.release()

