"""Publish a pipeline's outputs as one set.

The mixture, exports, plots and report of one pipeline run are rendered into a staging
folder inside the output directory, then moved into place: a run that fails before that
(a bad setting, a failed prediction or export) changes none of the previous outputs, and
outputs of an earlier run that this one does not produce (the mixture of another target,
an export no longer listed) are removed, so the directory never mixes two runs. The report
goes first and comes back last: a directory without ``report.md`` holds a set whose moving
was interrupted, and rerunning the same command completes it.
"""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import List, Set

from ..atomic import atomic_write_json

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
STAGING_DIR = ".staging"
RECORD_FILE = ".outputs.json"
"""The files the last published set holds (relative paths), to remove them when stale."""
OLD_PATTERNS = ("mixture_*.json", "exports/*.txt")
"""Outputs of a set published without a record (interrupted, or an older version)."""


def staging_dir(out: Path) -> Path:
    """An empty staging folder (what an interrupted run left there is discarded)."""
    staging = Path(out) / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, out: Path, last: str = REPORT_FILE) -> List[str]:
    """Move every file of ``staging`` to the same place under ``out``, ``last`` at the end,
    remove outputs of the previous set that this one lacks, and record the new set."""
    new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    previous = _previous_set(out)
    for name in (RECORD_FILE, last):  # an interrupted move must not pass for a complete set
        (out / name).unlink(missing_ok=True)
    for name in sorted(new, key=lambda n: n == last):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        _sync_directory(target.parent)
    for name in sorted(previous - set(new)):
        _remove_stale(out, name)
    atomic_write_json(out / RECORD_FILE, {"files": new})
    shutil.rmtree(staging, ignore_errors=True)
    return new


def _previous_set(out: Path) -> Set[str]:
    try:
        files = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))["files"]
        return {f for f in files if isinstance(f, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return {p.relative_to(out).as_posix() for pattern in OLD_PATTERNS for p in out.glob(pattern)}


def _remove_stale(out: Path, name: str) -> None:
    path = (out / name).resolve()
    if out.resolve() not in path.parents or not path.is_file():
        return  # only files of ours, inside the output directory
    logger.info("removing %s: an output of an earlier pipeline run that this one does not make", path)
    path.unlink()


def _sync_directory(directory: Path) -> None:
    # A rename reaches the disk only once the directory entry does.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
