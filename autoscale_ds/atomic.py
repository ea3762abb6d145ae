"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, List, Union

PathLike = Union[str, os.PathLike]


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same directory, fsync, rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide results
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave no stray temp file behind, whatever interrupted us.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_json(path: PathLike, payload: Any) -> Path:
    """Serialise ``payload`` deterministically (sorted keys are NOT used: order is meaning)."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes (recorded in provenance to pin the exact inputs)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMP_TAIL = re.compile(r"[a-z0-9_]{8}\.tmp")


def stale_temp_files(path: PathLike) -> List[Path]:
    """Temp files an interrupted write of ``path`` left beside it.

    Both :func:`atomic_write_bytes` (``mkstemp``) and the token-store writer name their temp
    files ``.NAME.XXXXXXXX.tmp`` next to the target; a SIGKILL skips their cleanup. Only the
    caller knows that no writer of ``path`` is running: remove these only while holding the
    lock that serialises the writers.
    """
    path = Path(path)
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(p for p in entries
                  if p.name.startswith(prefix) and _TEMP_TAIL.fullmatch(p.name[len(prefix):]))
