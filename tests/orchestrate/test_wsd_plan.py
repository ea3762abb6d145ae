"""The WSD proxy plan without training: each mixture is one family (the largest budget's run
keeps a checkpoint where each smaller budget's decay starts; the smaller runs branch there),
it costs what the issue asks, and a branch whose parent checkpoint is gone is recomputed."""

import json
from dataclasses import replace

import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.orchestrate.pipeline import PipelineConfig, check_pipeline
from autoscale_ds.orchestrate.wsd import with_parent_or_from_scratch
from autoscale_ds.train.branch import BRANCH_POINT_FILE, BRANCH_POINT_SCHEMA, checkpoint_tag
from autoscale_ds.train.plan import plan_samples

DOMAINS = ["code", "docstrings"]
TRAIN = {"model_size": "tiny", "seq_len": 32, "micro_batch_size": 8, "global_batch_size": 8}


def _pipeline(prepared, tmp_path, budgets, **changes):
    settings = dict(manifest=str(prepared.root / "manifest.yaml"), output_dir=str(tmp_path / "out"),
                    budgets=budgets, target_tokens=100_000, domains=DOMAINS, train=dict(TRAIN),
                    proxy_schedule="wsd")
    settings.update(changes)
    return PipelineConfig(**settings)


def _steps(config) -> int:
    return plan_samples(config.tokens_per_domain, config.seq_len, config.global_batch_size).total_steps


def test_every_smaller_budget_branches_from_the_largest_runs_decay_start(prepared, tmp_path):
    budgets = [6144, 12288, 24576]
    plans = check_pipeline(_pipeline(prepared, tmp_path, budgets)).plans
    parents = {run.run_id: run for run in plans[24576]}
    assert set(parents) == {run.run_id for run in plans[6144]} == {run.run_id for run in plans[12288]}
    warmups = {run.config.warmup_steps for plan in plans.values() for run in plan}
    assert len(warmups) == 1 and warmups.pop() >= 1
    for budget in budgets[:2]:
        for run in plans[budget]:
            parent = parents[run.run_id]
            assert run.config.lr_schedule == parent.config.lr_schedule == "wsd"
            # Same proportions as the parent (the trainer refuses a branch that changes them).
            scale = budget / budgets[-1]
            for domain, tokens in parent.config.tokens_per_domain.items():
                assert run.config.tokens_per_domain[domain] == pytest.approx(tokens * scale, rel=1e-12)
            steps = _steps(run.config)
            decay = max(1, round(run.config.decay_fraction * steps))
            assert run.config.branch_from == {"checkpoint_dir": str(parent.output_dir / "checkpoints"),
                                              "step": steps - decay}
            assert steps - decay in parent.config.keep_checkpoints_at_steps
            assert run.tokens_trained == decay * 8 * 32
    for parent in parents.values():
        assert parent.config.branch_from is None
        assert len(parent.config.keep_checkpoints_at_steps) == 2


def test_wsd_proxy_compute_is_under_seven_tenths_of_cosine_for_three_budgets(prepared, tmp_path):
    def trained(schedule, budgets):
        config = _pipeline(prepared, tmp_path / schedule, budgets, proxy_schedule=schedule)
        return sum(run.tokens_trained for plan in check_pipeline(config).plans.values() for run in plan)

    three = [6144, 12288, 24576]
    two = [12288, 24576]
    assert trained("wsd", three) / trained("cosine", three) <= 0.7
    assert trained("wsd", two) / trained("cosine", two) < 0.8


def test_a_branch_keeps_its_key_whether_it_branches_or_starts_from_scratch(prepared, tmp_path):
    plans = check_pipeline(_pipeline(prepared, tmp_path, [6144, 12288])).plans
    branch = plans[6144][0]
    scratch = replace(branch.config, branch_from=None)
    assert branch.key == type(branch)(branch.run_id, scratch).key
    parent = plans[12288][0]
    assert parent.key == type(parent)(parent.run_id, replace(parent.config, keep_checkpoints_at_steps=[])).key


def test_a_branch_without_its_parent_checkpoint_is_recomputed_not_skipped(prepared, tmp_path, caplog):
    plans = check_pipeline(_pipeline(prepared, tmp_path, [6144, 12288])).plans
    branch = plans[6144][0]
    planned = branch.config.branch_from
    full_cost = (_steps(branch.config)) * 8 * 32
    assert branch.tokens_trained < full_cost
    # The parent's record is there: the branch stays a branch.
    tag = tmp_path / "out" / "ddo_12.3K" / "runs" / branch.run_id / "checkpoints" / checkpoint_tag(planned["step"])
    tag.mkdir(parents=True)
    (tag / BRANCH_POINT_FILE).write_text(json.dumps({
        "schema": BRANCH_POINT_SCHEMA, "step": planned["step"], "lineage": "x",
        "stream_samples": {"code": 1}, "budget": {"code": 1.0}, "schedule": {}}))
    assert with_parent_or_from_scratch(branch).config.branch_from == planned
    # Gone: the branch trains from scratch, at its full cost, under the same key.
    (tag / BRANCH_POINT_FILE).unlink()
    key = branch.key
    assert with_parent_or_from_scratch(branch).config.branch_from is None
    assert branch.key == key and branch.tokens_trained == full_cost
    assert "training it from scratch" in caplog.text


@pytest.mark.parametrize("changes, field", [
    ({"proxy_schedule": "linear"}, "proxy_schedule"),
    ({"train": dict(TRAIN, lr_schedule="wsd")}, "train.lr_schedule"),
])
def test_bad_proxy_schedule_settings_are_named(prepared, tmp_path, changes, field):
    with pytest.raises(InputError, match=field):
        _pipeline(prepared, tmp_path, [6144, 12288], **changes)
