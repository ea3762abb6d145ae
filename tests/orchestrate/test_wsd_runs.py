"""WSD proxy families trained for real: the pipeline trains each mixture once, to the largest
budget, and every smaller budget is a decay branch; under a constant schedule a family's runs
files are those of independent runs, budget by budget."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from autoscale_ds.orchestrate.pipeline import PipelineConfig, check_pipeline
from autoscale_ds.orchestrate.runner import run_sweep
from autoscale_ds.orchestrate.sweep import ProxyRun
from autoscale_ds.train.branch import checkpoint_tag

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.slow

from test_orchestrate import _env  # noqa: E402  (the worker environment of the sweep tests)

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ["code", "docstrings"]
TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8,
         "eval_samples_per_domain": 4, "learning_rate": 3e-3}


def _settings(prepared, out: Path, budgets, **changes) -> dict:
    settings = {"manifest": str(prepared.root / "manifest.yaml"), "output_dir": str(out),
                "budgets": budgets, "target_tokens": 50_000, "domains": DOMAINS, "train": dict(TRAIN),
                "executor": {"kind": "local", "workers": 2}, "ddo": {"sensitivity_draws": 10},
                "export": {"formats": ["megatron"]}, "proxy_schedule": "wsd"}
    settings.update(changes)
    return settings


def _rows(runs_file: Path):
    return json.loads(runs_file.read_text())["runs"]


def _branch_of(sweep_dir: Path, run_id: str) -> dict:
    return _rows(sweep_dir / "runs" / run_id / "result.json")[0]["branch_from"]


def test_the_wsd_pipeline_trains_each_mixture_once_and_branches_the_smaller_budgets(prepared, tmp_path):
    out = tmp_path / "wsd"
    config = tmp_path / "wsd.yaml"
    config.write_text(yaml.safe_dump(_settings(prepared, out, [3072, 6144, 12288])))
    result = subprocess.run([sys.executable, "-m", "autoscale_ds", "pipeline", "--config", str(config)],
                            env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["proxy_schedule"] == "wsd" and summary["budgets"] == [3072, 6144, 12288]
    parents = {row["id"]: row for row in _rows(out / "ddo_12.3K" / "runs.json")}
    assert len(parents) == 2 + 2 * 2 and all(row["status"] == "ok" for row in parents.values())
    full_cost = 0
    for folder in ("ddo_3.07K", "ddo_6.14K"):
        rows = _rows(out / folder / "runs.json")
        assert {row["id"] for row in rows} == set(parents)
        for row in rows:
            assert row["status"] == "ok", row
            # The run's own result says where it branched; the parent kept that checkpoint.
            branch = _branch_of(out / folder, row["id"])
            tag = Path(branch["checkpoint_dir"]) / checkpoint_tag(branch["step"])
            assert branch["step"] > 0 and tag.is_dir() and tag.parent.parent.name == row["id"]
            full_cost += sum(row["train_tokens"].values())
    full_cost += sum(sum(row["train_tokens"].values()) for row in parents.values())
    # Three budgets at x2 spacing: at most 0.7 of the tokens that independent runs would train.
    assert summary["proxy_tokens_trained"] <= 0.7 * full_cost
    assert (out / "mixture_50K.json").exists() and (out / "ddo_3.07K" / "mixture.json").exists()


def test_constant_schedule_families_give_the_runs_files_of_independent_runs(prepared, tmp_path):
    # Under a constant learning rate a branch is exactly the run it replaces: same samples,
    # same steps. So the per-budget runs files of a family equal those of each budget's runs
    # trained on their own (each branch's own result.json also says where it started).
    config = PipelineConfig(**_settings(prepared, tmp_path / "family", [3072, 6144], seeds=[0]))
    plans = check_pipeline(config).plans
    for plan in plans.values():
        for run in plan:
            run.config = replace(run.config, lr_schedule="constant")
    for budget in (6144, 3072):  # parents first
        run_sweep(config.sweep(budget), runs=plans[budget])
    alone = tmp_path / "alone" / "ddo_3.07K"
    runs = [ProxyRun(run.run_id, replace(run.config, branch_from=None,
                                         output_dir=str(alone / "runs" / run.run_id)))
            for run in plans[3072]]
    sweep = replace(config.sweep(3072), output_dir=str(alone))
    run_sweep(sweep, runs=runs)
    family = tmp_path / "family" / "ddo_3.07K"
    assert all(_branch_of(family, run.run_id)["step"] > 0 for run in plans[3072])
    assert (family / "runs.json").read_bytes() == (alone / "runs.json").read_bytes()
