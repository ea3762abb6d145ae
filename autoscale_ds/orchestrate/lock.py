"""One orchestrator per output directory.

An exclusive ``flock`` on ``<dir>/.lock``: the kernel drops it when the holder dies, even by
SIGKILL, so a crashed orchestrator never leaves a stale lock behind, and a second one started
on the same directory gets a clear message instead of corrupting it.
"""

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..errors import InputError


class DirectoryLock:
    def __init__(self, directory):
        self.path = Path(directory) / ".lock"
        self._handle = None

    def acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            handle.close()
            raise InputError(f"{self.path.parent} is in use by another orchestrator ({holder}); "
                             "wait for it to finish or stop it, then rerun") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._handle = handle
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
        except (OSError, ValueError):
            return "unknown process"

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
