"""`launchers/ddo.py` under a 2-rank launch (torchrun, gloo, CPU): rank 0 alone plans, records,
solves and writes; rank 1 trains each run with it and writes nothing; both exit 0.

Which rank wrote what is observed, not assumed: each rank runs the launcher under a Python
audit hook that logs every file it opens for writing, renames, creates or deletes under the
sweep's output directory.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["code", "docstrings"]

# Runs launchers/ddo.py as __main__ with an audit hook that records this rank's writes.
WATCHED_LAUNCH = r'''
import atexit, json, os, runpy, sys

watched = os.path.realpath(os.environ["WATCH_DIR"])
log_path = os.environ["WRITE_LOG"] + "." + os.environ.get("RANK", "?")
writes = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def under_watch(path):
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(watched)
    except TypeError:  # a file descriptor
        return False


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        if writing and under_watch(path):
            writes.append([event, os.fsdecode(path)])
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
        if under_watch(args[0]) or (event == "os.rename" and under_watch(args[1])):
            writes.append([event] + [os.fsdecode(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))])


def dump():
    with open(log_path, "w") as handle:
        json.dump(writes, handle)


sys.addaudithook(hook)
atexit.register(dump)
sys.argv = [os.environ["LAUNCHER"]] + sys.argv[1:]
runpy.run_path(os.environ["LAUNCHER"], run_name="__main__")
'''


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT), **extra)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def _sweep_config(prepared, out: Path, **overrides) -> Path:
    config = {
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
        "budget_tokens": 1024, "domains": DOMAINS, "seeds": [0], "ratios": [0.5, 2.0],
        "train": {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 4,
                  "global_batch_size": 8, "eval_samples_per_domain": 2, "learning_rate": 3e-3},
        # The default executor (local) must not apply: each rank would start its own workers.
        "executor": {"kind": "local", "workers": 2},
        "ddo": {"sensitivity_draws": 0, "noise_sigma": 0.01},
    }
    config.update(overrides)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch_two_ranks(tmp_path, config: Path, out: Path):
    script = tmp_path / "watched_launch.py"
    script.write_text(WATCHED_LAUNCH)
    env = _env(WATCH_DIR=str(out), WRITE_LOG=str(tmp_path / "writes"),
               LAUNCHER=str(ROOT / "launchers" / "ddo.py"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), "--config", str(config)]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _writes(tmp_path, rank: int):
    return json.loads((tmp_path / f"writes.{rank}").read_text())


def test_two_rank_sweep_rank0_alone_records_and_solves(prepared, tmp_path):
    out = tmp_path / "sweep"
    result = _launch_two_ranks(tmp_path, _sweep_config(prepared, out), out)
    assert result.returncode == 0, result.stderr[-6000:]
    runs = json.loads((out / "runs.json").read_text())["runs"]
    ids = ["base-s0"] + [f"{d}-x{r:g}" for d in DOMAINS for r in (0.5, 2.0)]
    assert [r["id"] for r in runs] == ids and all(r["status"] == "ok" for r in runs)
    mixture = json.loads((out / "mixture.json").read_text())
    assert set(mixture["weights"]) == set(DOMAINS)
    # Rank 1 trained every run with rank 0 and wrote no file under the sweep. DeepSpeed's
    # save_checkpoint has every rank create the checkpoint's tag directory (exist_ok): empty
    # directories, the only trace a rank of a ZeRO-0 run leaves.
    rank1 = _writes(tmp_path, 1)
    assert rank1 and all(w[0] == "os.mkdir" and re.fullmatch(r"step_\d{8}", Path(w[1]).name)
                         for w in rank1), rank1
    followed = set(re.findall(r"run (\S+): training with rank 0 \(rank 1\)", result.stderr))
    assert followed == set(ids), result.stderr[-4000:]
    rank0 = _writes(tmp_path, 0)
    renamed_to = [w[2] for w in rank0 if w[0] == "os.rename"]
    assert renamed_to.count(str(out / "runs.json")) == len(ids)  # one atomic write per run
    assert str(out / "mixture.json") in renamed_to
    # The local executor was replaced by the in-process one, with a warning.
    assert "does not apply under a 2-rank launch" in result.stderr
    assert not list(out.glob("runs/*/train.log"))  # no worker processes were started


def test_two_rank_sweep_with_a_bad_config_reports_once_and_rank1_exits_0(prepared, tmp_path):
    out = tmp_path / "bad"
    config = _sweep_config(prepared, out, budget_tokens=-5)
    result = _launch_two_ranks(tmp_path, config, out)
    errors = [line for line in result.stderr.splitlines() if "ddo-run: error:" in line]
    assert len(errors) == 1 and "budget_tokens" in errors[0], result.stderr[-4000:]
    # torchrun prints a traceback of its own for the failed launch; none may come from us.
    assert not re.search(r'File ".*autoscale_ds/', result.stderr), result.stderr[-4000:]
    assert result.returncode != 0  # rank 0's exit 2 fails the launch...
    assert re.search(r"rank\s*: 0 .*exitcode\s*: 2", result.stderr, re.S), result.stderr[-3000:]
    assert "<NO_OTHER_FAILURES>" in result.stderr  # ...and rank 1 exited 0
    assert _writes(tmp_path, 1) == []
