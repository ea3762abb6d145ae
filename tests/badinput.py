"""Replaying a bad input: run a command as a user would and check it failed cleanly.

A clean failure is exit code 2, exactly one ``PROG: error: ...`` line on stderr that names
what to fix, no Python traceback, and every input file byte-for-byte as it was.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent


def snapshot(paths: Iterable) -> Dict[str, Optional[str]]:
    """{path: sha256 of its bytes} for every file under ``paths`` (None: did not exist)."""
    digests: Dict[str, Optional[str]] = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digests[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else None
    return digests


def run_command(argv: Sequence, cwd=None, env: Optional[dict] = None, timeout: float = 300,
                file_permissions_bind: bool = False):
    """``python -m autoscale_ds ARGV`` (or ``python SCRIPT ...`` when argv[0] ends in .py).

    ``file_permissions_bind``: run so that file modes apply even as root (a container's root
    reads a chmod-000 file), by dropping the capabilities that bypass them."""
    argv = [str(a) for a in argv]
    command = [sys.executable] + (argv if argv[0].endswith(".py") else ["-m", "autoscale_ds"] + argv)
    if file_permissions_bind and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            import pytest

            pytest.skip("running as root without setpriv: file permissions cannot bind")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] + command
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    full_env.update(env or {})
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str, prog: str = "autoscale"):
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error:")]


def assert_clean_failure(result, *, names: Sequence[str] = (), prog: str = "autoscale",
                         unchanged: Optional[Dict[str, Optional[str]]] = None, code: int = 2):
    """Exit ``code``, one error line containing every string of ``names``, no traceback,
    and (given a ``snapshot`` taken before the run) no input changed."""
    where = f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, where
    assert result.returncode == code, where
    lines = error_lines(result.stderr, prog)
    assert len(lines) == 1, f"expected one '{prog}: error:' line\n{where}"
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in {lines[0]!r}"
    if unchanged is not None:
        assert snapshot(unchanged) == unchanged, f"an input changed\n{where}"
    return lines[0]


def refuses(argv: Sequence, *, names: Sequence[str] = (), inputs: Iterable = (),
            prog: str = "autoscale", cwd=None, env: Optional[dict] = None, code: int = 2,
            file_permissions_bind: bool = False):
    """Run ``argv`` and assert a clean failure; return the error line."""
    before = snapshot(inputs)
    result = run_command(argv, cwd=cwd, env=env, file_permissions_bind=file_permissions_bind)
    return assert_clean_failure(result, names=names, prog=prog, unchanged=before, code=code)
