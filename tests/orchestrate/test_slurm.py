"""The SLURM executor and job templates, on a real SLURM cluster (no mocks).

Cluster tests need root and a cluster: an already running one (``sinfo`` answers), or, with
``AUTOSCALE_SLURM_SETUP=1``, a one-node cluster that ``scripts/slurm_local.sh`` installs and
starts for the session (and stops afterwards). Otherwise they are skipped with the reason.
Rendering and input-error tests run everywhere.
"""

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoscale_ds.errors import InputError
from autoscale_ds.orchestrate.executors import make_executor
from autoscale_ds.orchestrate.runner import run_sweep
from autoscale_ds.orchestrate.pretrain_job import render_pretrain_script, write_pretrain_script
from autoscale_ds.orchestrate.slurm import SlurmExecutor
from autoscale_ds.orchestrate.sweep import load_sweep_config, plan_sweep

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[2]
SETUP = os.environ.get("AUTOSCALE_SLURM_SETUP") == "1"
EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
         "eval_samples_per_domain": 4, "learning_rate": 3e-3}
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def _cluster_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(s.strip("*~#") in ("idle", "mixed", "allocated")
                                        for s in done.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster():
    """The default partition of a SLURM cluster that accepts jobs."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root (the local test cluster runs as root)")
    if shutil.which("sbatch") is None and not SETUP:
        pytest.skip("sbatch not found; set AUTOSCALE_SLURM_SETUP=1 to install a local cluster")
    started = False
    if not _cluster_answers():
        if not SETUP:
            pytest.skip("no SLURM node answers sinfo; start one with scripts/slurm_local.sh "
                        "or set AUTOSCALE_SLURM_SETUP=1")
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh")], check=True, timeout=1200)
        started = True
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    yield next(p.rstrip("*") for p in partitions if p.endswith("*"))
    if started:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "stop"], timeout=120)


def _executor(partition: str, **overrides) -> dict:
    spec = {"kind": "slurm", "partition": partition, "time": "00:15:00", "gpus_per_run": 0,
            "cpus_per_run": 1, "max_concurrent": 2, "poll_seconds": 1,
            "env": {"TORCH_EXTENSIONS_DIR": EXTENSIONS, "TOKENIZERS_PARALLELISM": "false"}}
    spec.update(overrides)
    return spec


def _sweep_yaml(prepared, out: Path, executor: dict, small: bool = False) -> Path:
    config = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
              "budget_tokens": 8192, "domains": ["code", "docstrings", "comments"], "seeds": [0, 1],
              "train": TRAIN, "executor": executor, "ddo": {"sensitivity_draws": 20}}
    if small:  # 5 runs: the base and two ratios of two domains
        config.update(domains=["code", "docstrings"], seeds=[0], ratios=[0.5, 2.0])
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _orchestrate(config: Path, log: Path) -> subprocess.Popen:
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from autoscale_ds.orchestrate.runner import run_sweep; "
            "from autoscale_ds.orchestrate.sweep import load_sweep_config; "
            "run_sweep(load_sweep_config(sys.argv[1]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-c", code, str(config)], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT)


def _wait_for(condition, timeout: float, what: str, process=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"orchestrator exited ({process.returncode}) before {what}:\n"
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _task_states(job_id: str) -> dict:
    out = subprocess.run(["squeue", "-j", job_id, "-t", "all", "-r", "-h", "-o", "%i|%T"],
                         capture_output=True, text=True).stdout
    return dict(line.split("|") for line in out.split())


def _trained_configs(slurm_dir: Path) -> list:
    """Config paths that array tasks started training, over all logs (with repeats)."""
    return [m for log in sorted((slurm_dir / "logs").glob("*.log"))
            for m in re.findall(r"trains (\S+)", log.read_text())]


# --- rendering and input errors: no cluster needed -------------------------------------------

def test_proxy_array_template_renders_valid_bash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/cache/ext")
    executor = make_executor({"kind": "slurm", "partition": "gpu", "time": "01:00:00", "gpus_per_run": 4,
                              "cpus_per_run": 8, "mem": "32G", "max_concurrent": 3,
                              "extra_sbatch": ["--account=proj"], "env": {"NCCL_DEBUG": "WARN x"}})
    script = tmp_path / "array.sbatch"
    script.write_text(executor.render(tmp_path / "slurm", tmp_path / "runs_0.txt", 5))
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, flags=re.M)
    assert directives == ["--job-name=autoscale-proxy", "--array=0-4%3", "--ntasks=1", "--cpus-per-task=8",
                          f"--output={tmp_path}/slurm/logs/%A_%a.log", f"--error={tmp_path}/slurm/logs/%A_%a.log",
                          "--partition=gpu", "--time=01:00:00", "--gres=gpu:4", "--mem=32G", "--account=proj"]
    assert f"PYTHON={sys.executable}\n" in text and "GPUS=4\n" in text
    assert "export TORCH_EXTENSIONS_DIR=/cache/ext" in text and "export NCCL_DEBUG='WARN x'" in text
    assert f"export PYTHONPATH={ROOT}" in text and "torch.distributed.run" in text
    assert "{{" not in text


@pytest.mark.parametrize("mode", ["megatron", "autoscale"])
def test_pretrain_template_renders_valid_bash(tmp_path, mode):
    settings = {"megatron": {"megatron_dir": "/opt/Megatron-LM", "data_args_path": "/data/blend.txt",
                             "megatron_args": "--num-layers 24 --vocab-file '/data/my vocab.json'"},
                "autoscale": {"train_config": "/runs/target.yaml", "mixture": "/runs/mixture.json"}}[mode]
    path = write_pretrain_script(tmp_path / "pretrain.sbatch", mode=mode, nodes=4, gpus_per_node=8,
                                 partition="gpu", time="2-00:00:00", extra_sbatch=["--exclusive"], **settings)
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert os.access(path, os.X_OK) and (tmp_path / "logs").is_dir()
    for line in ("#SBATCH --nodes=4", "#SBATCH --gres=gpu:8", "#SBATCH --exclusive", f"MODE={mode}\n",
                 '--node_rank "$SLURM_NODEID" --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"'):
        assert line in text
    if mode == "megatron":
        assert "DATA_ARGS_PATH=/data/blend.txt" in text and "--data-args-path" in text and "SPLIT=969,30,1\n" in text
    else:  # the installed module, not a file of the source tree
        assert "-m autoscale_ds.train.launch" in text and "launchers/train.py\"" not in text


# --- the Megatron-LM command the pretraining job runs ------------------------------------------

FAKE_SRUN = """#!/bin/bash
# Stands in for srun on one node: drop srun's own options and run the command here.
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
FAKE_PYTHON = """#!/bin/bash
# Stands in for the job's interpreter: records the argv it was given, NUL-separated.
printf '%s\\0' "$@" > "$ARGV_FILE"
"""


def _job_argv(script: Path, tmp_path: Path) -> list:
    """Run a rendered job script as SLURM would on one node, with srun, scontrol and the
    interpreter stood in for: the argv the interpreter gets (torchrun's, then the entry's)."""
    record = tmp_path / "argv.bin"
    env = dict(os.environ, SLURM_JOB_NODELIST="node0", SLURM_JOB_ID="4242", SLURM_NNODES="1",
               SLURM_NODEID="0", ARGV_FILE=str(record),
               PATH=os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]]))
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path, timeout=60)
    return record.read_bytes().decode().split("\0")[:-1]


def _fake_tools(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {"srun": FAKE_SRUN, "python": FAKE_PYTHON, "scontrol": "#!/bin/bash\necho node0\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir / "python"


def _megatron_command(tmp_path: Path, megatron_args: str, **settings) -> list:
    """pretrain_gpt.py's arguments in the job that write_pretrain_script renders."""
    python = _fake_tools(tmp_path)
    blend = tmp_path / "blend.txt"  # as `autoscale export --format megatron-data-args` writes it
    blend.write_text("0.7 /data/web_text_document\n0.3 /data/code_text_document\n")
    script = write_pretrain_script(tmp_path / "pretrain.sbatch", mode="megatron", nodes=1, gpus_per_node=0,
                                   megatron_dir="/opt/Megatron-LM", data_args_path=str(blend),
                                   megatron_args=megatron_args, python=str(python), **settings)
    argv = _job_argv(script, tmp_path)
    return argv[argv.index("/opt/Megatron-LM/pretrain_gpt.py") + 1:]


def _blend_config(command: list):
    """Megatron-LM's path from the command to the dataset config, through megatron-core's own
    code: the --data-args-path file read and split on whitespace, get_blend_from_list, and
    BlendedMegatronDatasetConfig, which checks blend and split."""
    core_utils = pytest.importorskip("megatron.core.datasets.utils")
    config = pytest.importorskip("megatron.core.datasets.blended_megatron_dataset_config")
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--data-args-path")
    parser.add_argument("--split")
    args, _ = parser.parse_known_args(command)
    with open(args.data_args_path, encoding="utf-8") as handle:
        blend = core_utils.get_blend_from_list(handle.read().split())
    return config.BlendedMegatronDatasetConfig(random_seed=1234, sequence_length=64, blend=blend,
                                               split=args.split)


def test_pretrain_megatron_command_gives_megatron_a_split(tmp_path):
    command = _megatron_command(tmp_path, "--num-layers 2 --save '/ckpt/run 1'")
    assert command[:4] == ["--num-layers", "2", "--save", "/ckpt/run 1"]
    assert command.count("--split") == 1 and command[command.index("--split") + 1] == "969,30,1"
    config = _blend_config(command)
    assert config.blend == (["/data/web_text_document", "/data/code_text_document"], [0.7, 0.3])
    assert config.split_matrix == [(0, 0.969), (0.969, 0.999), (0.999, 1.0)]
    # The same command without --split is what the job ran before: upstream refuses it.
    i = command.index("--split")
    with pytest.raises(AssertionError, match="split must be provided when blend is not None"):
        _blend_config(command[:i] + command[i + 2:])


@pytest.mark.parametrize("given", [["--split", "98,2,0"], ["--split=98,2,0"]])
def test_pretrain_megatron_command_keeps_the_users_split(tmp_path, given):
    command = _megatron_command(tmp_path, " ".join(["--num-layers 2", *given]), split="90,10,0")
    assert [a for a in command if a.startswith("--split")] == given[:1]
    assert _blend_config(command).split_matrix == [(0, 0.98), (0.98, 1.0), None]  # no test split


def test_pretrain_megatron_split_setting(tmp_path):
    command = _megatron_command(tmp_path, "--num-layers 2", split="99,1,0")
    assert command[command.index("--split") + 1] == "99,1,0"


def test_pretrain_megatron_command_parses_with_megatron_lm(tmp_path):
    """Megatron-LM's own parser and blend reader, when a checkout is given."""
    checkout = os.environ.get("AUTOSCALE_MEGATRON_LM")
    if not checkout:
        pytest.skip("set AUTOSCALE_MEGATRON_LM to a Megatron-LM checkout to parse with its arguments.py")
    command = _megatron_command(tmp_path, "--num-layers 2 --hidden-size 64 --num-attention-heads 4 "
                                "--seq-length 64 --max-position-embeddings 64 --micro-batch-size 1")
    # Megatron-LM (since mid-2026) imports typing.override, new in Python 3.12, on the way to
    # arguments.py (megatron.training.models). At run time it is only a marker decorator (PEP 698):
    # on an older Python give typing the identical typing_extensions.override (a torch dependency)
    # so the real parser runs; on 3.12+ nothing is touched.
    code = ("import json, sys, typing\n"
            "if not hasattr(typing, 'override'):\n"
            "    import typing_extensions\n"
            "    typing.override = typing_extensions.override\n"
            "from megatron.training.arguments import parse_args\n"
            "sys.argv = ['pretrain_gpt.py'] + json.loads(sys.argv[1])\n"
            "args = parse_args()\n"
            "print(json.dumps({'split': args.split, 'data_args_path': args.data_args_path}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([checkout, str(ROOT)]))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(command)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"split": "969,30,1", "data_args_path": str(tmp_path / "blend.txt")}
    parsed = ["--data-args-path", seen["data_args_path"], "--split", seen["split"]]
    assert _blend_config(parsed).split_matrix == [(0, 0.969), (0.969, 0.999), (0.999, 1.0)]


def test_templates_are_package_data_and_launchers_links_to_them():
    from importlib.resources import files

    packaged = files("autoscale_ds.orchestrate").joinpath("templates")
    names = sorted(entry.name for entry in packaged.iterdir() if entry.name.endswith(".sbatch"))
    assert names == ["pretrain_multinode.sbatch", "proxy_array.sbatch"]
    for name in names:  # one source of truth: launchers/slurm/ holds links, not copies
        link = ROOT / "launchers" / "slurm" / name
        assert link.is_symlink() and link.resolve() == (ROOT / "autoscale_ds" / "orchestrate" / "templates" / name)


def test_a_customised_template_is_used_and_a_missing_one_is_an_input_error(tmp_path):
    custom = tmp_path / "mine.sbatch"
    custom.write_text("#!/bin/bash\n#SBATCH --nodes={{nodes}}\necho {{mode}}\n")
    text = render_pretrain_script(str(custom), mode="autoscale", train_config="t.yaml", nodes=3)
    assert text == "#!/bin/bash\n#SBATCH --nodes=3\necho autoscale\n"
    with pytest.raises(InputError, match=r"SLURM template \S*nope.sbatch: cannot read .*leave it out"):
        render_pretrain_script(str(tmp_path / "nope.sbatch"), mode="autoscale", train_config="t.yaml")
    with pytest.raises(InputError, match=r"template '\S*nope.sbatch' is not a readable file"):
        SlurmExecutor(template=str(tmp_path / "nope.sbatch"))  # refused with the settings, before any run
    mine = tmp_path / "my_array.sbatch"
    mine.write_text("#SBATCH --array={{array}}\n")
    assert SlurmExecutor(template=str(mine)).render(tmp_path / "slurm", tmp_path / "r.txt", 4) == "#SBATCH --array=0-3\n"
    with pytest.raises(InputError, match=r"mine.sbatch: unknown placeholder \{\{nodes\}\}"):
        SlurmExecutor(template=str(custom)).render(tmp_path / "slurm", tmp_path / "r.txt", 1)


def test_bad_settings_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['gpu_per_run'\]"):
        make_executor({"kind": "slurm", "gpu_per_run": 1})
    with pytest.raises(InputError, match="cpus_per_run must be a whole number >= 1"):
        SlurmExecutor(cpus_per_run=0)
    with pytest.raises(InputError, match="extra_sbatch must be a list"):
        SlurmExecutor(extra_sbatch="--account=x")
    with pytest.raises(InputError, match="mode megatron needs megatron_dir"):
        render_pretrain_script(mode="megatron", data_args_path="x")
    with pytest.raises(InputError, match="mode must be megatron or autoscale"):
        render_pretrain_script(mode="nemo", train_config="x")
    with pytest.raises(InputError, match=r"split must be 1 to 3 comma-separated proportions .*'90/10'"):
        render_pretrain_script(mode="megatron", megatron_dir="m", data_args_path="x", split="90/10")


def test_missing_sbatch_is_a_clear_input_error(prepared, tmp_path, monkeypatch):
    config = load_sweep_config(_sweep_yaml(prepared, tmp_path / "sweep", {"kind": "slurm"}, small=True))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="sbatch, squeue, scancel not found on PATH"):
        SlurmExecutor().execute(plan_sweep(config)[:1], lambda run, row: None)


# --- on the cluster ------------------------------------------------------------------------

def test_failed_submission_shows_sbatch_stderr(slurm_cluster, prepared, tmp_path):
    config = load_sweep_config(_sweep_yaml(prepared, tmp_path / "sweep", {"kind": "slurm"}, small=True))
    executor = SlurmExecutor(partition="no-such-partition")
    with pytest.raises(InputError, match=r"sbatch .*proxy_array_0.sbatch failed .*invalid partition"):
        executor.execute(plan_sweep(config)[:1], lambda run, row: None)


def test_a_run_that_dies_is_recorded_with_its_slurm_state_and_log_tail(slurm_cluster, prepared, tmp_path):
    spec = _executor(slurm_cluster)
    spec.pop("kind")
    config = load_sweep_config(_sweep_yaml(prepared, tmp_path / "sweep", {"kind": "slurm"}, small=True),
                               {"train": dict(TRAIN, max_epochs=1e-6)})  # asks for more than it allows
    rows = []
    SlurmExecutor(**spec).execute(plan_sweep(config)[:1], lambda run, row: rows.append((run.run_id, row)))
    [(run_id, row)] = rows
    assert run_id == "base-s0" and row["status"] == "failed" and row["failure_kind"] == "crash"
    assert re.search(r"SLURM task \d+_0 ended FAILED with exit code 2 without a result; log \S+/\d+_0\.log tail:",
                     row["reason"]), row["reason"]
    assert "train: error:" in row["reason"]


def test_ddo_sweep_through_a_job_array(slurm_cluster, prepared, tmp_path):
    out = tmp_path / "sweep"
    config = load_sweep_config(_sweep_yaml(prepared, out, _executor(slurm_cluster)))
    result = run_sweep(config)
    runs = plan_sweep(config)
    assert sorted(result.trained) == sorted(r.run_id for r in runs) and result.failed == []

    slurm_dir = out / "slurm"
    assert sorted(p.name for p in slurm_dir.glob("proxy_array_*")) == ["proxy_array_0.sbatch"]
    configs = (slurm_dir / "runs_0.txt").read_text().split()
    assert configs == [str(r.config_path) for r in runs]
    logs = sorted(slurm_dir.glob("logs/*.log"))
    job_ids = {log.stem.split("_")[0] for log in logs}
    assert len(logs) == len(runs) and len(job_ids) == 1, logs
    assert sorted(_trained_configs(slurm_dir)) == sorted(configs)
    assert all("exited with code 0" in log.read_text() for log in logs)
    assert not (slurm_dir / "active_job").exists()

    rows = json.loads(result.runs_path.read_text())["runs"]
    assert [r["id"] for r in rows] == [r.run_id for r in runs] and {r["status"] for r in rows} == {"ok"}
    mixture = json.loads(result.mixture_path.read_text())
    assert mixture["schema"] == "autoscale.mixture/v1"
    assert sum(mixture["weights"].values()) == pytest.approx(1.0)

    again = run_sweep(config)
    assert again.trained == [] and not (slurm_dir / "proxy_array_1.sbatch").exists()


def test_restart_after_sigkill_reattaches_and_resubmits_only_what_is_missing(slurm_cluster, prepared, tmp_path,
                                                                            caplog):
    out = tmp_path / "sweep"
    config_path = _sweep_yaml(prepared, out, _executor(slurm_cluster), small=True)
    runs = plan_sweep(load_sweep_config(config_path))
    active = out / "slurm" / "active_job"
    log = tmp_path / "orchestrator.log"
    first = _orchestrate(config_path, log)
    try:
        _wait_for(lambda: active.exists() and json.loads(active.read_text())["jobs"], 60,
                  "the array's submission", first, log)
        _wait_for(lambda: list(out.glob("runs/*/result.json")), 240, "a first result", first, log)
    finally:
        first.kill()  # SIGKILL: no chance to clean up or cancel anything
        first.wait()
    job_id = next(iter(json.loads(active.read_text())["jobs"]))
    last = f"{job_id}_{len(runs) - 1}"
    assert _task_states(job_id)[last] == "PENDING"  # throttled to 2 at a time
    subprocess.run(["scancel", last], check=True)  # as if it never ran: it must be resubmitted
    _wait_for(lambda: _task_states(job_id).get(last) in ENDED + (None,), 30, f"{last} to end")

    with caplog.at_level(logging.INFO, logger="autoscale_ds.orchestrate.slurm"):
        result = run_sweep(load_sweep_config(config_path))
    reattached = re.findall(r"re-attached to task (\S+)", caplog.text)
    assert reattached and last not in reattached, caplog.text
    slurm_dir = out / "slurm"
    assert sorted(p.name for p in slurm_dir.glob("proxy_array_*")) == ["proxy_array_0.sbatch", "proxy_array_1.sbatch"]
    assert (slurm_dir / "runs_1.txt").read_text().split() == [str(runs[-1].config_path)]
    assert sorted(_trained_configs(slurm_dir)) == sorted(str(r.config_path) for r in runs)  # each once
    rows = json.loads(result.runs_path.read_text())["runs"]
    assert len(rows) == len(runs) and {r["status"] for r in rows} == {"ok"}
    assert result.mixture_path.exists() and not active.exists()


def test_sigterm_cancels_the_array(slurm_cluster, prepared, tmp_path):
    out = tmp_path / "sweep"
    config_path = _sweep_yaml(prepared, out, _executor(slurm_cluster), small=True)
    active = out / "slurm" / "active_job"
    log = tmp_path / "orchestrator.log"
    process = _orchestrate(config_path, log)
    try:
        jobs = _wait_for(lambda: active.exists() and json.loads(active.read_text())["jobs"], 60,
                         "the array's submission", process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) != 0
    finally:
        process.kill()
    job_id = next(iter(jobs))
    _wait_for(lambda: all(s in ENDED for s in _task_states(job_id).values()), 60, "the array to end")
    assert "CANCELLED" in _task_states(job_id).values() and not active.exists()
    assert "cancelling SLURM job(s) " + job_id in log.read_text()


MEGATRON_STAND_IN = """
# Stands in for Megatron-LM's pretrain_gpt.py: records what the job script handed it.
import json, os, sys
blend = open(sys.argv[sys.argv.index("--data-args-path") + 1]).read().split()  # as Megatron reads it
record = {"argv": sys.argv[1:], "blend": blend, **{k: os.environ.get(k) for k in
          ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}}
with open(os.path.join(os.path.dirname(__file__), "seen.json"), "w") as handle:
    json.dump(record, handle)
"""


def _mixture(path: Path, weights: dict, total: int) -> Path:
    tokens = {d: int(w * total) for d, w in weights.items()}
    path.write_text(json.dumps({"schema": "autoscale.mixture/v1", "total_tokens": total, "weights": weights,
                                "tokens": tokens, "method": "ddo", "provenance": {}}))
    return path


def _wait_job(job_id: str, timeout: float) -> str:
    state = _wait_for(lambda: next((s for s in _task_states(job_id).values() if s in ENDED), None),
                      timeout, f"job {job_id}")
    return state


def test_pretrain_job_runs_both_modes_on_the_cluster(slurm_cluster, prepared, tmp_path):
    chosen = _mixture(tmp_path / "chosen.json", {"code": 0.5, "docstrings": 0.25, "comments": 0.25}, 3072)
    uniform = _mixture(tmp_path / "uniform.json", {"code": 0.5, "docstrings": 0.5}, 2048)
    target = tmp_path / "target.yaml"  # names another mixture: MIXTURE must replace it
    target.write_text(yaml.safe_dump({"manifest": str(prepared.root / "manifest.yaml"), "mixture": str(uniform),
                                      "output_dir": str(tmp_path / "target"), "run_id": "target",
                                      "progress": False, **TRAIN}))
    megatron = tmp_path / "Megatron-LM"
    megatron.mkdir()
    (megatron / "pretrain_gpt.py").write_text(MEGATRON_STAND_IN)
    paths = tmp_path / "paths.yaml"
    paths.write_text(yaml.safe_dump({d: f"/data/{d}_text_document" for d in ("code", "docstrings", "comments")}))
    blend = tmp_path / "blend.txt"
    subprocess.run([sys.executable, "-m", "autoscale_ds", "export", str(chosen), "--format", "megatron-data-args",
                    "--data-paths", str(paths), "--out", str(blend)], check=True, cwd=ROOT)

    common = {"nodes": 1, "gpus_per_node": 0, "cpus_per_node": 1, "partition": slurm_cluster,
              "time": "00:10:00", "env": {"TORCH_EXTENSIONS_DIR": EXTENSIONS, "OMP_NUM_THREADS": "1"}}
    scripts = {
        "autoscale": write_pretrain_script(tmp_path / "autoscale.sbatch", mode="autoscale",
                                           train_config=str(target), mixture=str(chosen), **common),
        "megatron": write_pretrain_script(tmp_path / "megatron.sbatch", mode="megatron", megatron_dir=str(megatron),
                                          megatron_args=f"--num-layers 2 --save '{tmp_path}/check points'",
                                          data_args_path=str(blend), **common)}
    jobs = {mode: subprocess.run(["sbatch", "--parsable", str(script)], check=True, capture_output=True,
                                 text=True).stdout.strip() for mode, script in scripts.items()}
    states = {mode: _wait_job(job, 240) for mode, job in jobs.items()}
    logs = {mode: (tmp_path / "logs" / f"autoscale-pretrain_{job}.log").read_text() for mode, job in jobs.items()}
    assert states == {"autoscale": "COMPLETED", "megatron": "COMPLETED"}, logs

    row = json.loads((tmp_path / "target" / "result.json").read_text())["runs"][0]
    assert row["status"] == "ok" and row["train_tokens"] == {"code": 1536, "docstrings": 768, "comments": 768}
    seen = json.loads((megatron / "seen.json").read_text())
    assert seen["argv"][:4] == ["--num-layers", "2", "--save", f"{tmp_path}/check points"]
    assert seen["blend"] == blend.read_text().split() and len(seen["blend"]) == 6
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == ("0", "1", "0")
    assert "pretrain: megatron on 1 node(s) x 1 process(es)" in logs["megatron"]


# --- WSD branches: each waits for its own parent's task (--dependency) ----------------------

def _wsd_pipeline(prepared, out: Path, executor: dict, **changes):
    from autoscale_ds.orchestrate.pipeline import PipelineConfig

    settings = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
                "budgets": [3072, 6144], "target_tokens": 50_000, "domains": ["code", "docstrings"],
                "seeds": [0], "train": TRAIN, "executor": executor, "proxy_schedule": "wsd",
                "ddo": {"sensitivity_draws": 10, "noise_sigma": 0.02}, "export": {"formats": []}}
    settings.update(changes)
    return PipelineConfig(**settings)


def _dependency(script: Path):
    found = re.findall(r"^#SBATCH --dependency=afterany:(\d+)_(\d+)$", script.read_text(), re.M)
    return (found[0][0], int(found[0][1])) if found else None


def test_wsd_branches_are_submitted_at_once_and_wait_for_their_own_parent(slurm_cluster, prepared, tmp_path):
    from autoscale_ds.orchestrate.pipeline import run_pipeline

    out = tmp_path / "wsd"
    run_pipeline(_wsd_pipeline(prepared, out, _executor(slurm_cluster)))
    parents_dir, branches_dir = out / "ddo_6.14K", out / "ddo_3.07K"
    parent_configs = (parents_dir / "slurm" / "runs_0.txt").read_text().split()
    parent_job = {log.stem.split("_")[0] for log in (parents_dir / "slurm" / "logs").glob("*.log")}
    assert len(parent_job) == 1 and len(parent_configs) == 5
    branch_scripts = sorted((branches_dir / "slurm").glob("proxy_array_*.sbatch"))
    assert len(branch_scripts) == 5  # one job per branch, each with its own dependency
    for script in branch_scripts:
        number = script.stem.rsplit("_", 1)[1]
        [config] = (branches_dir / "slurm" / f"runs_{number}.txt").read_text().split()
        run_id = Path(config).parent.name
        job, index = _dependency(script)
        assert job in parent_job and Path(parent_configs[index]).parent.name == run_id
        # submitted while its parent still trained, not after the parents' whole sweep
        parent_result = parents_dir / "runs" / run_id / "result.json"
        assert script.stat().st_mtime < parent_result.stat().st_mtime
        row = json.loads((branches_dir / "runs" / run_id / "result.json").read_text())["runs"][0]
        assert row["status"] == "ok" and row["branch_from"]["step"] > 0
    rows = json.loads((branches_dir / "runs.json").read_text())["runs"]
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    assert json.loads((out / "summary.json").read_text())["proxy_schedule"] == "wsd"


def test_a_branch_whose_parent_is_cancelled_is_trained_from_scratch(slurm_cluster, prepared, tmp_path):
    from autoscale_ds.orchestrate.pipeline import check_pipeline

    config = _wsd_pipeline(prepared, tmp_path / "wsd", _executor(slurm_cluster))
    plans = check_pipeline(config).plans
    parent, branch = plans[6144][0], plans[3072][0]
    assert branch.config.branch_from and branch.run_id == parent.run_id
    recorded = {}

    def record(run, row):
        recorded[run.output_dir.parent.parent.name] = row

    held = SlurmExecutor(**{k: v for k, v in _executor(slurm_cluster, extra_sbatch=["--hold"]).items()
                            if k != "kind"})
    parent_submission = held.submit([parent], record)
    executor = SlurmExecutor(**{k: v for k, v in _executor(slurm_cluster).items() if k != "kind"})
    branch_submission = executor.submit([branch], record)
    [(parent_job, _)] = parent_submission.watch
    first = tmp_path / "wsd" / "ddo_3.07K" / "slurm" / "proxy_array_0.sbatch"
    assert _dependency(first) == (parent_job, 0)
    subprocess.run(["scancel", parent_job], check=True)  # the parent never trains
    executor.wait(branch_submission)
    held.wait(parent_submission)
    assert recorded["ddo_6.14K"]["status"] == "failed" and "CANCELLED" in recorded["ddo_6.14K"]["reason"]
    row = recorded["ddo_3.07K"]
    assert row["status"] == "ok" and branch.config.branch_from is None
    assert not row.get("branch_from")  # trained from step 0, the same WSD schedule
    second = first.with_name("proxy_array_1.sbatch")
    assert second.exists() and _dependency(second) is None


def test_autoscale_mix_doremi_runs_on_the_cluster_like_in_process(slurm_cluster, prepared, tmp_path):
    # The reference run, then the DoReMi proxy that reads its checkpoint: two submissions in
    # order, and the same weights as the in-process executor gives.
    from autoscale_ds.formats.schemas import load_mixture
    from autoscale_ds.orchestrate.mix import run_mix
    from autoscale_ds.orchestrate.mix_config import mix_config_from

    def mix(name, executor):
        return run_mix(mix_config_from({
            "manifest": str(prepared.root / "manifest.yaml"), "method": "doremi",
            "out": str(tmp_path / f"{name}.json"), "output_dir": str(tmp_path / name),
            "domains": ["code", "docstrings"], "target_tokens": "1M",
            "train": {**TRAIN, "max_epochs": 1}, "executor": executor,
            "doremi": {"proxy_tokens": 2048, "reference_tokens": 1024}}))

    on_cluster = mix("slurm", _executor(slurm_cluster))
    assert on_cluster.trained == ["doremi-reference", "doremi-proxy"] and not on_cluster.failed
    assert len(list((tmp_path / "slurm" / "slurm").glob("proxy_array_*.sbatch"))) == 2
    mix("inprocess", {"kind": "inprocess"})
    # Equal up to float reduction order: a SLURM task and this process may run torch on
    # different thread counts, so the last bits of the losses can differ.
    in_process = load_mixture(tmp_path / "inprocess.json").weights
    assert load_mixture(tmp_path / "slurm.json").weights == pytest.approx(in_process, abs=1e-6)
    assert max(in_process.values()) - min(in_process.values()) > 1e-3  # the update moved them
