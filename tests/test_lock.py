"""The output-directory lock on filesystems without ``flock`` (some Lustre and NFS mounts).

Such a filesystem is stood in for by making ``fcntl.flock`` fail as theirs does (ENOLCK,
EOPNOTSUPP, ENOSYS); the owner-file fallback itself runs on the real filesystem, against real
processes.
"""

import errno
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoscale_ds.errors import InputError
from autoscale_ds import lock as lock_module
from autoscale_ds.lock import DirectoryLock

ROOT = Path(__file__).resolve().parent.parent


def _no_flock(code):
    def flock(handle, operation):
        raise OSError(code, "No locks available" if code == errno.ENOLCK else "not supported")
    return flock


@pytest.fixture
def flockless(monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.ENOLCK))
    monkeypatch.delenv("AUTOSCALE_LOCK", raising=False)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_without_flock_the_owner_file_locks_and_says_so(tmp_path, monkeypatch, caplog, code):
    monkeypatch.setattr(fcntl, "flock", _no_flock(code))
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.lock"):
        held = DirectoryLock(tmp_path).acquire()
    owner = tmp_path / ".lock.owner"
    assert json.loads(owner.read_text())["pid"] == os.getpid() and "refuses flock" in caplog.text
    with pytest.raises(InputError) as refused:  # a second orchestrator on the directory
        DirectoryLock(tmp_path).acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message and str(owner) in message
    assert "remove the file" in message
    held.release()
    assert not owner.exists()
    DirectoryLock(tmp_path).acquire().release()  # free again


def test_an_error_other_than_no_flock_is_not_swallowed(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _no_flock(errno.EIO))
    with pytest.raises(OSError) as raised:
        DirectoryLock(tmp_path).acquire()
    assert raised.value.errno == errno.EIO and not (tmp_path / ".lock.owner").exists()


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, flockless, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    owner = tmp_path / ".lock.owner"
    owner.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="autoscale_ds.lock"):
        held = DirectoryLock(tmp_path).acquire()
    assert f"took over the lock of pid {pid}" in caplog.text
    assert json.loads(owner.read_text())["pid"] == os.getpid()
    held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing left behind


@pytest.mark.parametrize("content", [{"pid": 1234, "host": "login-07", "since": "2026-01-01 00:00:00"}, None])
def test_a_holder_that_cannot_be_checked_is_refused_with_the_file_to_remove(tmp_path, flockless, content):
    owner = tmp_path / ".lock.owner"
    owner.write_text(json.dumps(content) if content else "{not json")
    before = owner.read_bytes()
    with pytest.raises(InputError, match=r"in use by another autoscale run \((pid 1234 on login-07 since "
                                         r"2026-01-01 00:00:00|unknown process)\).*remove the file"):
        DirectoryLock(tmp_path).acquire()
    assert owner.read_bytes() == before


def test_release_leaves_a_successors_owner_file(tmp_path, flockless):
    held = DirectoryLock(tmp_path).acquire()
    successor = {"pid": 99999, "host": "login-07", "since": "later"}
    (tmp_path / ".lock.owner").write_text(json.dumps(successor))  # e.g. after a manual removal
    held.release()
    assert json.loads((tmp_path / ".lock.owner").read_text()) == successor


def test_autoscale_lock_file_skips_flock_and_excludes_another_process(tmp_path, monkeypatch):
    """AUTOSCALE_LOCK=file (flock that is node-local only): the owner file from the start; a
    live orchestrator in another process keeps the directory."""
    monkeypatch.setenv("AUTOSCALE_LOCK", "file")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from autoscale_ds.lock import DirectoryLock\n"
        "lock = DirectoryLock(%r).acquire(); print('locked', flush=True); time.sleep(60)") % (str(ROOT), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not (tmp_path / ".lock").exists()  # flock's file was never opened
        monkeypatch.setattr(fcntl, "flock", _no_flock(errno.EIO))  # would fail if it were called
        with pytest.raises(InputError, match=rf"pid {holder.pid} on "):
            DirectoryLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    DirectoryLock(tmp_path).acquire().release()  # its pid is gone: taken over


def test_unknown_lock_kind_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSCALE_LOCK", "nfs")
    with pytest.raises(InputError, match=r"AUTOSCALE_LOCK='nfs': expected 'flock' \(default\) or 'file'"):
        DirectoryLock(tmp_path).acquire()
    assert lock_module.LOCK_KIND_ENV == "AUTOSCALE_LOCK"
