"""Issue 11 replays for the integrations: the output-directory lock on filesystems without
``flock``, and the SLURM executor's job template.

Each case runs ``autoscale ddo-run`` as a user would (a subprocess) and checks it failed
cleanly: exit 2, one ``autoscale: error:`` line naming what to fix, no traceback, every input
as it was, and no proxy run started. The sweeps use the SLURM executor with no SLURM tools on
PATH, so a lock that wrongly let a sweep through would fail fast on ``sbatch`` instead of
training (and the error line would not name the lock).
"""

import json
import os
import socket
import time
from pathlib import Path

import pytest
import yaml

from badinput import REPO, refuses

TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
         "eval_samples_per_domain": 4}
# Stands in for a filesystem whose flock fails (Lustre/NFS without lock support), then runs the
# CLI exactly as the `autoscale` entry point does.
NO_FLOCK_CLI = """\
import errno, fcntl, sys

def flock(handle, operation):
    raise OSError(errno.ENOLCK, "No locks available")

fcntl.flock = flock
sys.argv[0] = "autoscale"
from autoscale_ds.cli import main
sys.exit(main())
"""


def _sweep(prepared, tmp_path: Path, **executor) -> Path:
    config = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(tmp_path / "sweep"),
              "budget_tokens": 8192, "domains": ["code", "docstrings"], "seeds": [0], "train": TRAIN,
              "executor": {"kind": "slurm", **executor}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(tmp_path: Path, **extra) -> dict:
    empty = tmp_path / "no-slurm-tools"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), **extra}


def _owner_file(out: Path, holder: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock.owner"
    path.write_text(json.dumps(holder))
    return path


def _no_run_started(out: Path) -> None:
    assert not (out / "runs").exists() and not (out / "slurm").exists(), sorted(out.rglob("*"))


# ------------------------------------------------------------ item 8: no flock on the filesystem

@pytest.mark.parametrize("how", ["flock fails (ENOLCK)", "AUTOSCALE_LOCK=file"])
def test_sweep_locked_by_an_orchestrator_on_another_host_is_refused(prepared, tmp_path, how):
    config = _sweep(prepared, tmp_path)
    owner = _owner_file(tmp_path / "sweep", {"pid": 4321, "host": "login-07", "since": "2026-12-01 09:00:00"})
    if how == "AUTOSCALE_LOCK=file":
        argv, env = ["ddo-run", "--config", config], _env(tmp_path, AUTOSCALE_LOCK="file")
    else:
        script = tmp_path / "autoscale_without_flock.py"
        script.write_text(NO_FLOCK_CLI)
        argv, env = [script, "ddo-run", "--config", config], _env(tmp_path, PYTHONPATH=str(REPO))
    started = time.monotonic()
    line = refuses(argv, names=["pid 4321 on login-07", str(owner), "remove the file"],
                   inputs=[config, owner], env=env)
    assert "flock is unavailable" in line and time.monotonic() - started < 120
    _no_run_started(tmp_path / "sweep")


def test_sweep_locked_by_a_live_orchestrator_on_this_host_is_refused(prepared, tmp_path):
    # The holder is this test's own process: alive, so its owner file must not be taken over.
    config = _sweep(prepared, tmp_path)
    owner = _owner_file(tmp_path / "sweep", {"pid": os.getpid(), "host": socket.gethostname(),
                                            "since": "2026-12-01 09:00:00"})
    refuses(["ddo-run", "--config", config], names=[f"pid {os.getpid()} on {socket.gethostname()}", str(owner)],
            inputs=[config, owner], env=_env(tmp_path, AUTOSCALE_LOCK="file"))
    _no_run_started(tmp_path / "sweep")


def test_unknown_lock_kind_is_refused(prepared, tmp_path):
    config = _sweep(prepared, tmp_path)
    refuses(["ddo-run", "--config", config], names=["AUTOSCALE_LOCK='lustre'", "'flock'", "'file'"],
            inputs=[config], env=_env(tmp_path, AUTOSCALE_LOCK="lustre"))
    _no_run_started(tmp_path / "sweep")


# ------------------------------------------------------------ item 7: the job template

@pytest.mark.parametrize("template", ["missing.sbatch", "a directory"])
def test_slurm_template_that_cannot_be_read_is_refused_before_the_lock(prepared, tmp_path, template):
    path = tmp_path / template
    if template == "a directory":
        path.mkdir()
    config = _sweep(prepared, tmp_path, template=str(path))
    refuses(["ddo-run", "--config", config], names=[str(path), "template", "proxy_array.sbatch"],
            inputs=[config], env=_env(tmp_path))
    assert not (tmp_path / "sweep").exists()
