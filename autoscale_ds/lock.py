"""One orchestrator per output directory.

An exclusive ``flock`` on ``<dir>/.lock``: the kernel drops it when the holder dies, even by
SIGKILL, so a crashed orchestrator never leaves a stale lock behind, and a second one started
on the same directory gets a clear message instead of corrupting it.

Some shared filesystems (Lustre or NFS mounted without lock support) refuse ``flock``
(ENOLCK, EOPNOTSUPP, ENOSYS), and some grant it per node only. There the lock is an owner
file, ``<dir>/.lock.owner``, created exclusively (``O_CREAT | O_EXCL``) with the holder's host
and pid and removed on release. Nothing removes it when its holder is killed outright: a
later orchestrator on the same host takes it over once that pid is gone; on another host it
names the file to remove. ``AUTOSCALE_LOCK=file`` chooses the owner file from the start (for
filesystems whose ``flock`` does not reach other nodes); ``AUTOSCALE_LOCK=flock`` (default)
tries ``flock`` first.
"""

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import InputError

logger = logging.getLogger(__name__)

LOCK_KIND_ENV = "AUTOSCALE_LOCK"
# flock refused by the filesystem itself (not "someone holds it"): use the owner file instead.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class DirectoryLock:
    def __init__(self, directory):
        self.path = Path(directory) / ".lock"
        self.owner_path = Path(directory) / ".lock.owner"
        self._handle = None
        self._owner = None  # the owner file's content while this process holds it

    def acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kind = os.environ.get(LOCK_KIND_ENV, "flock").strip().lower() or "flock"
        if kind not in ("flock", "file"):
            raise InputError(f"{LOCK_KIND_ENV}={kind!r}: expected 'flock' (default) or 'file'")
        if kind == "file" or not self._acquire_flock():
            self._acquire_owner_file()
        return self

    # --- flock ------------------------------------------------------------------------------

    def _acquire_flock(self) -> bool:
        """True: held. False: this filesystem has no flock (the caller falls back)."""
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_json(self.path))
            handle.close()
            raise InputError(f"{self.path.parent} is in use by another autoscale run ({holder}); "
                             "wait for it to finish or stop it, then rerun") from None
        except OSError as exc:
            handle.close()
            if exc.errno not in _NO_FLOCK:
                raise
            logger.warning("%s: the filesystem refuses flock (%s); locking with the owner file %s "
                           "instead (set %s=file to skip flock)", self.path.parent,
                           exc.strerror or exc, self.owner_path, LOCK_KIND_ENV)
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_me()))
        handle.flush()
        self._handle = handle
        return True

    # --- owner file -------------------------------------------------------------------------

    def _acquire_owner_file(self) -> None:
        owner = _me()
        for _ in range(3):  # a stale file taken away by a racing orchestrator: try again
            try:
                descriptor = os.open(self.owner_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._retire_stale_owner()
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(json.dumps(owner))
            self._owner = owner
            return
        raise InputError(f"{self.owner_path}: cannot take the lock file; rerun")

    def _retire_stale_owner(self) -> None:
        """Move away an owner file whose holder died on this host; else refuse clearly."""
        holder = _read_json(self.owner_path)
        if holder is None and not self.owner_path.exists():
            return  # released meanwhile
        if not (holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))):
            raise InputError(
                f"{self.owner_path.parent} is in use by another autoscale run ({_describe(holder)}) "
                f"per the lock file {self.owner_path} (the lock where flock is unavailable or "
                f"{LOCK_KIND_ENV}=file), which an orchestrator killed outright leaves behind: "
                "once no autoscale run uses that directory, remove the file and rerun")
        stale = self.owner_path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.replace(self.owner_path, stale)
        except FileNotFoundError:
            return  # another orchestrator retired it first
        stale.unlink(missing_ok=True)
        logger.warning("%s: took over the lock of %s, which no longer runs", self.owner_path.parent,
                       _describe(holder))

    # --- both -------------------------------------------------------------------------------

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        if self._owner is not None:
            if _read_json(self.owner_path) == self._owner:  # never remove a successor's file
                self.owner_path.unlink(missing_ok=True)
            self._owner = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def _describe(holder) -> str:
    if not isinstance(holder, dict):
        return "unknown process"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
