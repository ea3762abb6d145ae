"""WSD schedules and branches: the schedule math, kept checkpoints, a branch that starts from
its parent's stable phase and trains exactly what an independent run of its budget would,
resume after SIGKILL in a parent and in a branch, and the errors a wrong branch gets."""

import hashlib
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from autoscale_ds.errors import InputError
from autoscale_ds.train.config import TrainConfig
from autoscale_ds.train.plan import learning_rate_at, plan_schedule

SEQ_LEN = 32
PEAK, FLOOR = 3e-3, 3e-4  # test_train's learning rate, the default min_lr_ratio 0.1


def _samples(code, docstrings, comments):
    return {"code": code * SEQ_LEN, "docstrings": docstrings * SEQ_LEN, "comments": comments * SEQ_LEN}


# A family with one mixture (3 : 3 : 2): the parent runs 20 optimizer steps of 8 samples and
# keeps step 6; the branch's budget is 12 steps, half of them decay, so it starts at step 6.
PARENT_BUDGET, BRANCH_BUDGET = _samples(60, 60, 40), _samples(36, 36, 24)
BRANCH_STEP, BRANCH_STEPS, PARENT_STEPS = 6, 12, 20
FAMILY = {"lr_schedule": "wsd", "warmup_steps": 2}


# ----------------------------------------------------------------------------- schedule math

def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_the_floor():
    schedule = plan_schedule("wsd", 10, 1.0, 0.1, warmup_fraction=0.05, warmup_steps=2,
                             decay_fraction=0.3)
    lrs = [schedule.at(s) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]  # warmup
    assert lrs[2:7] == [1.0] * 5  # stable
    assert lrs[7:] == pytest.approx([0.7, 0.4, 0.1])  # 3 decay steps, the last at the floor
    assert schedule.stable_until == 7 and schedule.decay_steps == 3


def test_wsd_one_minus_sqrt_decay():
    lrs = [learning_rate_at(s, 10, 0, 1.0, 0.0, "wsd", 4, "1-sqrt") for s in range(10)]
    assert lrs[:6] == [1.0] * 6
    assert lrs[6:] == pytest.approx([1 - math.sqrt(k / 4) for k in (1, 2, 3, 4)])
    linear = [learning_rate_at(s, 10, 0, 1.0, 0.0, "wsd", 4, "linear") for s in range(6, 10)]
    assert all(a < b for a, b in zip(lrs[6:9], linear[:3]))  # 1-sqrt drops faster at first


def test_constant_schedule_warms_up_then_holds():
    assert [learning_rate_at(s, 10, 2, 1.0, 0.1, "constant") for s in range(10)] == [0.5] + [1.0] * 9


def test_cosine_is_unchanged_by_the_new_arguments():
    for step in range(101):
        old = learning_rate_at(step, 100, 10, 1e-3, 1e-4)
        assert learning_rate_at(step, 100, 10, 1e-3, 1e-4, "cosine", 17, "1-sqrt") == old
        assert plan_schedule("cosine", 100, 1e-3, 1e-4, 0.1).at(step) == old


def test_warmup_steps_override_the_fraction_and_must_leave_room_for_the_decay():
    assert plan_schedule("wsd", 100, 1.0, 0.0, 0.5, warmup_steps=3).warmup_steps == 3
    assert plan_schedule("cosine", 100, 1.0, 0.0, 0.05).warmup_steps == 5
    with pytest.raises(InputError, match="9 warmup steps \\+ 2 decay steps .* exceed the run's 10"):
        plan_schedule("wsd", 10, 1.0, 0.0, 0.05, warmup_steps=9, decay_fraction=0.2)


def test_new_settings_are_validated_together():
    with pytest.raises(InputError) as info:
        TrainConfig(manifest="m", output_dir="o", tokens_per_domain={"a": 100}, lr_schedule="step",
                    decay_fraction=1.5, decay_shape="cubic", warmup_steps=-1,
                    keep_checkpoints_at_steps=[0], branch_from={"dir": "x", "step": "6"})
    for fragment in ("lr_schedule must be one of cosine, wsd, constant", "decay_fraction",
                     "decay_shape", "warmup_steps", "keep_checkpoints_at_steps", "unknown key(s) ['dir']",
                     "branch_from.checkpoint_dir", "branch_from.step"):
        assert fragment in str(info.value)


def test_existing_configs_keep_their_fingerprint():
    config = TrainConfig(manifest="m", output_dir="o", tokens_per_domain={"a": 100}, seed=3)
    later = ("warmup_steps", "lr_schedule", "decay_fraction", "decay_shape",
             "keep_checkpoints_at_steps", "branch_from", "doremi")
    payload = {k: v for k, v in asdict(config).items()
               if k not in ("output_dir", "progress") + later}
    payload["zero_stage"] = 0
    assert config.fingerprint() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    wsd = TrainConfig(manifest="m", output_dir="o", tokens_per_domain={"a": 100}, seed=3, lr_schedule="wsd")
    assert wsd.fingerprint() != config.fingerprint()


def test_resumed_branch_whose_parent_is_gone_reads_its_own_record(tmp_path):
    from autoscale_ds.train.branch import BranchPoint, resolve_branch_point, write_branch_point

    config = TrainConfig(manifest="m", output_dir=str(tmp_path / "b"), tokens_per_domain={"a": 64},
                         branch_from={"checkpoint_dir": str(tmp_path / "gone"), "step": 6})
    own = tmp_path / "b" / "checkpoints"
    with pytest.raises(InputError, match="rerun the parent run"):
        resolve_branch_point(config, own)
    point = BranchPoint(8, "lineage", {"a": 10, "b": 30}, {"a": 64.0}, {})
    write_branch_point(own / "step_00000008", point)
    assert resolve_branch_point(config, own) == (point, False)  # nothing left to check against
    assert point.stream_weights() == [0.25, 0.75]
    with pytest.raises(InputError, match="this run's own checkpoint directory"):
        resolve_branch_point(config, tmp_path / "gone")


# ----------------------------------------------------------------------------- training

def _helpers():
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    import test_train

    return test_train


def _parent(tmp_path, prepared, name="parent", **overrides):
    settings = {**FAMILY, "tokens_per_domain": PARENT_BUDGET, "decay_fraction": 0.2,
                "keep_checkpoints_at_steps": [BRANCH_STEP], "checkpoint_interval_steps": 5,
                **overrides}
    return _helpers()._config(tmp_path, prepared, name, **settings)


def _branch(tmp_path, prepared, parent_dir, name="branch", **overrides):
    settings = {**FAMILY, "tokens_per_domain": BRANCH_BUDGET, "decay_fraction": 0.5,
                "checkpoint_interval_steps": 1,
                "branch_from": {"checkpoint_dir": str(parent_dir / "checkpoints"), "step": BRANCH_STEP},
                **overrides}
    return _helpers()._config(tmp_path, prepared, name, **settings)


def _train(config_path):
    return _helpers()._train(config_path, launcher=[sys.executable])


def _row(config_path):
    return _helpers()._row(config_path)


def _weights(run_dir: Path, step: int):
    import torch

    path = run_dir / "checkpoints" / f"step_{step:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def _assert_same_weights(a, b):
    import torch

    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def _snapshot(directory: Path):
    return {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def family(tmp_path_factory, prepared):
    """A WSD parent, a branch off it (the parent's directory watched), and an independent
    run at the branch's budget."""
    root = tmp_path_factory.mktemp("family")
    parent = _parent(root, prepared)
    _train(parent)
    before = _snapshot(root / "parent")
    branch = _branch(root, prepared, root / "parent")
    _train(branch)
    alone = _helpers()._config(root, prepared, "alone", **FAMILY, tokens_per_domain=BRANCH_BUDGET,
                               decay_fraction=0.5)
    _train(alone)
    return {"root": root, "parent": parent, "branch": branch, "alone": alone,
            "parent_untouched": before == _snapshot(root / "parent")}


@pytest.mark.slow
def test_parent_keeps_its_branch_point_and_the_branch_never_writes_there(family):
    kept = family["root"] / "parent" / "checkpoints" / f"step_{BRANCH_STEP:08d}"
    assert (kept / "branch_point.json").exists()  # not pruned by the later checkpoints
    assert family["parent_untouched"]
    row = _row(family["parent"])
    assert row["status"] == "ok" and row["steps"] == PARENT_STEPS


@pytest.mark.slow
def test_branch_trains_its_own_budget_from_the_parents_steps(family):
    parent, branch = _row(family["parent"]), _row(family["branch"])
    assert branch["status"] == "ok"
    assert branch["steps"] == branch["planned_steps"] == BRANCH_STEPS
    assert branch["train_tokens"] == BRANCH_BUDGET
    assert branch["branch_from"] == {"checkpoint_dir": str(family["root"] / "parent" / "checkpoints"),
                                     "step": BRANCH_STEP}
    assert branch["step_losses"][:BRANCH_STEP] == parent["step_losses"][:BRANCH_STEP]
    assert branch["step_losses"][BRANCH_STEP + 1:] != parent["step_losses"][BRANCH_STEP + 1:BRANCH_STEPS]


@pytest.mark.slow
def test_wsd_branch_equals_an_independent_wsd_run_of_its_budget(family):
    """Its decay starts at the branch point, so this also checks the branch's learning rate
    at its first step (the parent's checkpoint carries the peak)."""
    branch, alone = _row(family["branch"]), _row(family["alone"])
    assert branch["step_losses"] == alone["step_losses"]
    assert branch["eval_loss"] == alone["eval_loss"]
    _assert_same_weights(_weights(family["root"] / "branch", BRANCH_STEPS),
                         _weights(family["root"] / "alone", BRANCH_STEPS))


def _trainer(config_path, monkeypatch):
    from autoscale_ds.train.config import load_train_config
    from autoscale_ds.train.trainer import Trainer

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)  # what ensure_launcher_env sets, undone after the test
    return Trainer(load_train_config(config_path))


@pytest.mark.slow
def test_branch_reads_the_parents_samples_byte_for_byte(family, monkeypatch):
    parent = _trainer(family["parent"], monkeypatch).stream
    branch = _trainer(family["branch"], monkeypatch).stream
    assert branch.plan.total_steps == BRANCH_STEPS
    for step in range(BRANCH_STEPS):  # the prefix, and every step the branch trains itself
        for accumulation_index in range(branch.triple.accumulation_steps):
            mine, theirs = branch.micro_batch(step, accumulation_index), parent.micro_batch(step, accumulation_index)
            assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(mine, theirs))
    assert branch.tokens_consumed(BRANCH_STEPS) == parent.tokens_consumed(BRANCH_STEPS) == BRANCH_BUDGET


def _kill_when(config_path, marker: Path):
    _helpers().kill_train_when(config_path, marker)


def _same_result(a, b):
    for key in ("status", "steps", "train_tokens", "step_losses", "eval_loss", "eval"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_killed_parent_and_killed_branch_resume_to_the_same_result(family, tmp_path, prepared):
    parent = _parent(tmp_path, prepared)
    _kill_when(parent, tmp_path / "parent" / "checkpoints" / "latest")
    assert not (tmp_path / "parent" / "result.json").exists()
    _train(parent)
    _same_result(_row(parent), _row(family["parent"]))
    _assert_same_weights(_weights(tmp_path / "parent", PARENT_STEPS),
                         _weights(family["root"] / "parent", PARENT_STEPS))

    branch = _branch(tmp_path, prepared, tmp_path / "parent")
    _kill_when(branch, tmp_path / "branch" / "checkpoints" / f"step_{BRANCH_STEP + 2:08d}")
    assert not (tmp_path / "branch" / "result.json").exists()
    result = _train(branch)
    assert "resumed from step" in result.stderr and "branched from" not in result.stderr
    _same_result(_row(branch), _row(family["branch"]))
    _assert_same_weights(_weights(tmp_path / "branch", BRANCH_STEPS),
                         _weights(family["root"] / "branch", BRANCH_STEPS))


@pytest.mark.slow
def test_constant_branch_equals_an_independent_constant_run(tmp_path, prepared):
    constant = {"lr_schedule": "constant", "warmup_steps": 2}
    parent = _parent(tmp_path, prepared, **constant)
    branch = _branch(tmp_path, prepared, tmp_path / "parent", **constant)
    alone = _helpers()._config(tmp_path, prepared, "alone", **constant, tokens_per_domain=BRANCH_BUDGET)
    for config in (parent, branch, alone):
        _train(config)
    _same_result(_row(branch), _row(alone))
    _assert_same_weights(_weights(tmp_path / "branch", BRANCH_STEPS),
                         _weights(tmp_path / "alone", BRANCH_STEPS))


# ----------------------------------------------------------------------------- wrong branches

@pytest.mark.slow
def test_branch_without_its_parent_checkpoint_is_a_clear_error(tmp_path, prepared):
    from badinput import refuses

    missing = tmp_path / "never_ran"
    branch = _branch(tmp_path, prepared, missing)
    tag = missing / "checkpoints" / f"step_{BRANCH_STEP:08d}"
    refuses([_helpers().TRAIN, "--config", branch], prog="train", inputs=[branch],
            names=[str(tag), "does not exist", "rerun the parent run",
                   f"keep_checkpoints_at_steps including {BRANCH_STEP}"])
    assert not (tmp_path / "branch").exists()


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "the parent was trained with another run config"),
    ({"tokens_per_domain": _samples(40, 36, 24)}, "this branch's mixture differs from its parent's"),
    ({"warmup_steps": 3}, "the parent's learning rate at step 0 was"),
    ({"decay_fraction": 0.75}, "branch_from.step 6 is after this branch's decay starts (step 3"),
    ({"branch_from_step": 20}, "the parent's decay had started at step 16"),
    ({"keep_checkpoints_at_steps": [4, 8]}, "keep_checkpoints_at_steps [4] are not after the branch point 6"),
    ({"keep_checkpoints_at_steps": [13]}, "keep_checkpoints_at_steps [13] lie beyond the run's 12"),
])
def test_branch_of_a_different_run_is_refused(family, tmp_path, prepared, monkeypatch, change, message):
    change = dict(change)
    step = change.pop("branch_from_step", BRANCH_STEP)
    branch = _branch(tmp_path, prepared, family["root"] / "parent", **change,
                     branch_from={"checkpoint_dir": str(family["root"] / "parent" / "checkpoints"),
                                  "step": step})
    if step != BRANCH_STEP:  # a long branch, from the parent's last checkpoint
        settings = yaml.safe_load(branch.read_text())
        settings["tokens_per_domain"] = _samples(120, 120, 80)
        branch.write_text(yaml.safe_dump(settings))
    with pytest.raises(InputError) as info:
        _trainer(branch, monkeypatch)
    assert message in str(info.value)


@pytest.mark.slow
def test_two_rank_zero_branch_equals_an_independent_run(tmp_path, prepared, zero_stage=2):
    """Branching under a 2-rank launch (gloo) with ZeRO-2 partitioned optimizer states and gradients
    (stage 1 passes the same way; one stage keeps CI short): each
    rank restores its own shard at the branch point, so the branch still trains exactly
    what an independent run of its budget trains."""
    two_ranks = _helpers()._torchrun(2)
    sharded = {"zero_stage": zero_stage, "micro_batch_size": 4, "global_batch_size": 8}
    parent = _parent(tmp_path, prepared, **sharded)
    _helpers()._train(parent, launcher=two_ranks)
    branch = _branch(tmp_path, prepared, tmp_path / "parent", **sharded)
    _helpers()._train(branch, launcher=two_ranks)
    alone = _helpers()._config(tmp_path, prepared, "alone", **FAMILY, **sharded,
                               tokens_per_domain=BRANCH_BUDGET, decay_fraction=0.5)
    _helpers()._train(alone, launcher=two_ranks)
    branch_row, alone_row = _row(branch), _row(alone)
    assert branch_row["branch_from"]["step"] == BRANCH_STEP
    assert branch_row["step_losses"][:BRANCH_STEP] == _row(parent)["step_losses"][:BRANCH_STEP]
    assert branch_row["step_losses"] == alone_row["step_losses"]
    assert branch_row["eval_loss"] == alone_row["eval_loss"]
