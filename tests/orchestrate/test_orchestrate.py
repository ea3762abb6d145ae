"""DDO sweeps end to end on CPU: planning, restart safety under SIGKILL, locking, failures."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from autoscale_ds.errors import InputError
from autoscale_ds.lock import DirectoryLock
from autoscale_ds.orchestrate.sweep import SweepConfig, plan_sweep

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["code", "docstrings", "comments"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def _sweep_config(prepared, out: Path, **overrides) -> Path:
    config = {
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
        "budget_tokens": 6144, "domains": DOMAINS, "seeds": [0, 1],
        "train": {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8,
                  "global_batch_size": 8, "eval_samples_per_domain": 4, "learning_rate": 3e-3},
        "executor": {"kind": "inprocess"}, "ddo": {"sensitivity_draws": 10},
    }
    config.update(overrides)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _orchestrate(config: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "autoscale_ds.orchestrate.ddo_run", "--config",
                             str(config)], env=_env(), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)


def _trained_in(log: Path):
    return set(re.findall(r"run (\S+): training in this process", log.read_text()))


def _finished_runs(out: Path):
    done = set()
    for result in (out / "runs").glob("*/result.json"):
        done.add(json.loads(result.read_text())["runs"][0]["id"])
    return done


def test_sweep_plan_keeps_other_domains_at_base_and_fills_whole_steps(prepared, tmp_path):
    config = SweepConfig(manifest=str(prepared.root / "manifest.yaml"), output_dir=str(tmp_path),
                         budget_tokens=10_000, domains=DOMAINS, seeds=[0, 1, 2],
                         train={"seq_len": 32, "global_batch_size": 8})
    runs = plan_sweep(config)
    assert [r.run_id for r in runs][:3] == ["base-s0", "base-s1", "base-s2"]
    assert len(runs) == 3 + 2 * len(DOMAINS)
    base = runs[0].config.tokens_per_domain
    for run in runs:
        tokens = run.config.tokens_per_domain
        assert sum(tokens.values()) % (32 * 8) == 0 and all(n % 32 == 0 for n in tokens.values())
        changed = [d for d in DOMAINS if tokens[d] != base[d]]
        assert len(changed) == (0 if run.run_id.startswith("base") else 1)
        if changed:
            ratio = float(run.run_id.split("-x")[1])
            assert tokens[changed[0]] / base[changed[0]] == pytest.approx(ratio, abs=8 / (base[changed[0]] / 32))
    assert len({r.key for r in runs}) == len(runs)


def test_killed_sweeps_restart_to_identical_bytes_without_retraining(prepared, tmp_path):
    whole = tmp_path / "whole"
    process = _orchestrate(_sweep_config(prepared, whole), tmp_path / "whole.log")
    assert process.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]

    cut = tmp_path / "cut"
    config = _sweep_config(prepared, cut)
    rng = np.random.default_rng(7)
    kills = 0
    for attempt in range(4):
        before = _finished_runs(cut) if cut.exists() else set()
        log = tmp_path / f"cut{attempt}.log"
        process = _orchestrate(config, log)
        time.sleep(float(rng.uniform(3.0, 9.0)))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert not (_trained_in(log) & before), "a finished run was trained again"
        runs_file = cut / "runs.json"
        if runs_file.exists():  # never a partial file
            assert json.loads(runs_file.read_text())["schema"] == "autoscale.runs/v1"
    assert kills >= 2, "the sweep finished too fast to be interrupted"
    before = _finished_runs(cut)
    final_log = tmp_path / "cut_final.log"
    assert _orchestrate(config, final_log).wait(timeout=600) == 0, final_log.read_text()[-3000:]
    assert not (_trained_in(final_log) & before)
    assert (cut / "mixture.json").read_bytes() == (whole / "mixture.json").read_bytes()
    assert (cut / "runs.json").read_bytes() == (whole / "runs.json").read_bytes()


def test_a_second_orchestrator_is_refused_with_a_clear_message(prepared, tmp_path):
    out = tmp_path / "busy"
    config = _sweep_config(prepared, out)
    first = _orchestrate(config, tmp_path / "first.log")
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        second = subprocess.run([sys.executable, "-m", "autoscale_ds.orchestrate.ddo_run", "--config",
                                 str(config)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert "in use by another autoscale run (pid" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_lock_is_released_when_its_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from autoscale_ds.lock import DirectoryLock\n"
        "lock = DirectoryLock(%r).acquire(); print('locked', flush=True); time.sleep(60)") % (str(ROOT), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match="in use by another autoscale run"):
        DirectoryLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    DirectoryLock(tmp_path).acquire().release()


def test_failed_runs_are_recorded_and_the_solve_names_domains_lacking_data(prepared, tmp_path):
    out = tmp_path / "failing"
    # x3 runs ask for more tokens than max_epochs allows: they fail, the sweep goes on.
    config = _sweep_config(prepared, out, seeds=[0],
                           train={"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8,
                                  "global_batch_size": 8, "eval_samples_per_domain": 4,
                                  "max_epochs": 0.12})
    log = tmp_path / "failing.log"
    assert _orchestrate(config, log).wait(timeout=600) == 0, log.read_text()[-3000:]
    rows = {r["id"]: r for r in json.loads((out / "runs.json").read_text())["runs"]}
    failed = sorted(i for i, r in rows.items() if r["status"] == "failed")
    assert failed and all(i.endswith("-x3") for i in failed)
    assert all("max_epochs" in rows[i]["reason"] for i in failed)
    mixture = json.loads((out / "mixture.json").read_text())
    assert set(mixture["provenance"]["pinned"]) == {i.split("-x")[0] for i in failed}
    assert "too few perturbed runs" in log.read_text() or "perturbed ratio" in log.read_text()
    rerun = tmp_path / "failing_again.log"
    assert _orchestrate(config, rerun).wait(timeout=600) == 0
    assert not _trained_in(rerun)  # deterministic failures are not retried


def test_pipeline_with_local_workers_writes_mixture_exports_and_report(prepared, tmp_path):
    out = tmp_path / "pipeline"
    config = tmp_path / "autoscale.yaml"
    config.write_text(yaml.safe_dump({
        "manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
        "budgets": [3072, 6144, 12288], "target_tokens": 50_000, "domains": DOMAINS[:2],
        "train": {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
                  "eval_samples_per_domain": 4, "eval_interval_steps": 4},
        "executor": {"kind": "local", "workers": 2},
        "ddo": {"sensitivity_draws": 20}, "predict": {"floor": {"*": 0.05}},
        "export": {"formats": ["megatron", "gpt-neox"]},
    }))
    result = subprocess.run([sys.executable, "-m", "autoscale_ds", "pipeline", "--config", str(config)],
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    mixture = json.loads((out / "mixture_50K.json").read_text())
    assert mixture["method"] == "autoscale" and mixture["total_tokens"] == 50_000
    assert min(mixture["weights"].values()) >= 0.05 - 1e-12
    for name in ("report.md", "weights.png", "loss_curves.png", "ddo_3.07K/responses.png",
                 "ddo_12.3K/responses.png", "exports/megatron.txt", "exports/gpt-neox.txt",
                 "backtest.json"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "AutoScale @50K" in report and "![weights](weights.png)" in report
    # Noise-aware by default: the base run over seeds 0 and 1 gives each DDO weight its
    # noise, each DDO mixture its shrinkage, and the prediction its shrinkage per domain.
    ddo = json.loads((out / "ddo_12.3K" / "mixture.json").read_text())
    assert ddo["provenance"]["noise_aware"]["applied"] is True
    assert set(ddo["provenance"]["noise_aware"]["factors"]) == set(DOMAINS[:2])
    assert mixture["provenance"]["noise_aware"]["applied"] in (True, False)
    # Three budgets: the largest is predicted from the two smaller ones, in the report too.
    backtest = json.loads((out / "backtest.json").read_text())
    assert backtest["schema"] == "autoscale.backtest/v1"
    assert set(backtest["domains"]) == set(DOMAINS[:2])
    assert backtest["domains"]["code"]["ddo"] == pytest.approx(ddo["weights"]["code"])
    assert set(backtest["methods"]) == {"noise_aware", "plain"}
    assert "## Backtest" in report and "| noise-aware |" in report
    megatron = (out / "exports" / "megatron.txt").read_text().split()
    assert len(megatron) == 4 and megatron[1].endswith("code/train_text_document")
    # Every proxy ran in a worker process of its own, with a log.
    assert len(list(out.glob("ddo_*/runs/*/train.log"))) == 3 * (2 + 2 * 2)
    assert "mixture:" in result.stdout and "report:" in result.stdout
    # summary.json: the budgets, the schedule, and the proxy tokens every run of the plan
    # trained (from scratch, under the cosine schedule: the sum of the runs files' rows).
    summary = json.loads((out / "summary.json").read_text())
    rows = [row for runs in out.glob("ddo_*/runs.json") for row in json.loads(runs.read_text())["runs"]]
    assert len(rows) == 3 * (2 + 2 * 2)
    assert summary["budgets"] == [3072, 6144, 12288] and summary["proxy_schedule"] == "cosine"
    assert summary["proxy_tokens_trained"] == sum(sum(r["train_tokens"].values()) for r in rows)
    assert summary["mixture"] == "mixture_50K.json" and summary["proxy_runs"] == len(rows)


def _run_on_foreign_tokens(prepared, tmp_path):
    """A proxy run whose docstrings store holds ids past the vocabulary (all 0xFF bytes)."""
    import shutil

    from autoscale_ds.orchestrate.sweep import ProxyRun
    from autoscale_ds.train.config import TrainConfig

    root = tmp_path / "prepared"
    shutil.copytree(prepared.root, root)
    store = root / prepared.domains["docstrings"].train.prefix
    bin_path = store.with_name(store.name + ".bin")
    bin_path.write_bytes(b"\xff" * bin_path.stat().st_size)
    config = TrainConfig(manifest=str(root / "manifest.yaml"), output_dir=str(tmp_path / "run"),
                         tokens_per_domain={"code": 256, "docstrings": 256}, run_id="foreign",
                         seq_len=32, micro_batch_size=8, global_batch_size=8, progress=False)
    return ProxyRun("foreign", config), bin_path


@pytest.mark.parametrize("kind", ["inprocess", "local"])
def test_a_run_refused_by_the_vocab_check_is_a_recorded_failure(prepared, tmp_path, monkeypatch, kind):
    from autoscale_ds.orchestrate.executors import make_executor

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)  # restored after the test (the trainer sets them)
    run, bin_path = _run_on_foreign_tokens(prepared, tmp_path)
    recorded = []
    make_executor({"kind": kind}).execute([run], lambda r, row: recorded.append((r.run_id, row)))
    [(run_id, row)] = recorded
    assert run_id == "foreign" and row["status"] == "failed" and row["failure_kind"] == "input"
    assert str(bin_path) in row["reason"] and "vocab_size" in row["reason"]


def test_a_sweep_check_builds_everything_and_names_every_problem_before_any_run(prepared, tmp_path):
    from autoscale_ds.orchestrate.runner import check_sweep

    good = SweepConfig(manifest=str(prepared.root / "manifest.yaml"), output_dir=str(tmp_path / "ok"),
                       budget_tokens=6144, domains=DOMAINS, train={"seq_len": 32, "global_batch_size": 8},
                       executor={"kind": "inprocess"}, ddo={"available_tokens": {"code": "1M"}})
    checked = check_sweep(good)
    assert len(checked.runs) == 1 + 2 * len(DOMAINS) and checked.options.available_tokens == {"code": 1e6}
    assert checked.options.allow_incomplete is True  # failed runs never sink a sweep
    bad = SweepConfig(manifest=str(prepared.root / "manifest.yaml"), output_dir=str(tmp_path / "bad"),
                      budget_tokens=6144, domains=DOMAINS,
                      train={"seq_len": 32, "global_batch_size": 8, "learning_rate": -1},
                      executor={"kind": "local", "workers": 0}, ddo={"ratio_bounds": {"web": [0.5, 2]}})
    with pytest.raises(InputError) as caught:
        check_sweep(bad)
    message = str(caught.value)
    assert "\n" not in message
    for field in ("train: invalid training config: learning_rate must be positive",
                  "ddo.ratio_bounds.web: not a domain of this sweep", "executor: executor workers must be >= 1"):
        assert field in message, message
    assert not (tmp_path / "bad").exists()


def test_publishing_replaces_the_previous_set_and_moves_the_report_last(tmp_path, monkeypatch):
    import autoscale_ds.orchestrate.outputs as outputs

    out = tmp_path / "out"
    (out / "exports").mkdir(parents=True)
    old = {"mixture_50K.json": "old", "exports/gpt-neox.txt": "old", "exports/hf.txt": "old",
           "report.md": "old", "notes.txt": "the user's"}
    for name, text in old.items():
        (out / name).write_text(text)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (out / outputs.RECORD_FILE).write_text(json.dumps({"files": [
        "mixture_50K.json", "exports/gpt-neox.txt", "exports/hf.txt", "report.md", "../outside.txt"]}))
    staging = outputs.staging_dir(out)
    for name in ("mixture_100K.json", "exports/hf.txt", "report.md"):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text("new")
    moved = []
    real_replace = outputs.os.replace
    monkeypatch.setattr(outputs.os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b)))
    assert outputs.publish(staging, out) == ["exports/hf.txt", "mixture_100K.json", "report.md"]
    assert moved[-2:] == ["report.md", outputs.RECORD_FILE]  # the record only once all is in place
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [outputs.RECORD_FILE, "exports/hf.txt", "mixture_100K.json", "notes.txt", "report.md"]
    assert all((out / f).read_text() == "new" for f in ("exports/hf.txt", "mixture_100K.json", "report.md"))
    assert outside.read_text() == "not ours" and (out / "notes.txt").read_text() == "the user's"
    assert json.loads((out / outputs.RECORD_FILE).read_text())["files"] == [
        "exports/hf.txt", "mixture_100K.json", "report.md"] and not staging.exists()


def test_unreadable_checkpoints_are_recorded_as_a_retryable_crash(prepared, tmp_path, monkeypatch):
    """Deleting damaged checkpoints fixes the run, so a restarted sweep must retry it; other
    input errors are deterministic and are not retried."""
    from autoscale_ds.orchestrate.executors import train_in_process
    from autoscale_ds.orchestrate.runs_store import RunsStore
    from autoscale_ds.train import trainer

    def damaged(config):
        raise trainer.CheckpointUnreadable("no readable checkpoint in /x/checkpoints: ...")

    monkeypatch.setattr(trainer, "Trainer", damaged)
    run, _ = _run_on_foreign_tokens(prepared, tmp_path)
    row = train_in_process(run)
    assert row["status"] == "failed" and row["failure_kind"] == "crash"
    store = RunsStore(tmp_path / "runs.json", [run.run_id])
    store.record(run.run_id, run.key, row)
    assert not store.done(run.key)
