"""Pure parts of a training run: the batch triple, sample plan, LR schedule, config checks,
proxy model presets and deterministic masking."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscale_ds.errors import InputError
from autoscale_ds.train.config import TrainConfig
from autoscale_ds.train.plan import derive_batch_triple, learning_rate_at, plan_samples


def test_batch_triple_is_derived_from_the_global_batch():
    triple = derive_batch_triple(64, micro_batch_size=4, world_size=2)
    assert (triple.micro_batch_size, triple.accumulation_steps, triple.world_size) == (4, 8, 2)
    assert triple.global_batch_size == 64
    with pytest.raises(InputError, match="not a multiple of micro_batch_size 4 x world size 3 = 12"):
        derive_batch_triple(64, micro_batch_size=4, world_size=3)


@given(budgets=st.lists(st.integers(0, 5000), min_size=1, max_size=8),
       seq_len=st.sampled_from([16, 32, 128]), global_batch=st.sampled_from([1, 4, 8, 64]))
def test_sample_plan_fills_whole_steps_and_never_exceeds_a_budget(budgets, seq_len, global_batch):
    tokens = {f"d{i}": b * 10 for i, b in enumerate(budgets)}
    if sum(t // seq_len for t in tokens.values()) < global_batch:
        with pytest.raises(InputError, match="less than one optimizer step"):
            plan_samples(tokens, seq_len, global_batch)
        return
    plan = plan_samples(tokens, seq_len, global_batch)
    assert plan.total_samples % global_batch == 0
    assert plan.total_steps == plan.total_samples // global_batch
    for domain, budget in tokens.items():
        planned = plan.tokens_per_domain[domain]
        assert 0 <= planned <= budget
        assert budget - planned < seq_len + global_batch * seq_len  # trimmed by < one step
    assert math.fsum(plan.weights) == pytest.approx(1.0)


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    lrs = [learning_rate_at(s, 100, 10, 1e-3, 1e-4) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(5.5e-4)  # halfway through the decay
    assert lrs[100] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_config_reports_all_problems_and_survives_wrong_types():
    with pytest.raises(InputError) as info:
        TrainConfig(manifest="m", output_dir="o", tokens_per_domain={"a": "lots"},
                    model_family="gpt2", model_size=["x"], seq_len="long", learning_rate="fast",
                    zero_stage=True, monitor="csv", warmup_fraction=1.0)
    text = str(info.value)
    for fragment in ("tokens_per_domain['a']", "gpt2 size", "seq_len", "learning_rate",
                     "zero_stage", "monitor", "warmup_fraction"):
        assert fragment in text


def test_config_fingerprint_ignores_where_the_run_writes():
    a = TrainConfig(manifest="m", output_dir="x", tokens_per_domain={"a": 100})
    b = TrainConfig(manifest="m", output_dir="y", tokens_per_domain={"a": 100})
    c = TrainConfig(manifest="m", output_dir="x", tokens_per_domain={"a": 200})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_model_presets_and_masking():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from autoscale_ds.train.models import build_model, count_parameters, masked_batch

    sizes = {size: count_parameters(build_model("gpt2", size, 50257, 1024))
             for size in ("tiny", "small")}
    assert 120e6 < sizes["small"] < 130e6  # GPT-2 small: 124M parameters
    bert = build_model("bert", "tiny", 1000, 64)
    assert bert.config.vocab_size == 1001  # one extra id serves as [MASK]
    tokens = torch.randint(0, 1000, (4, 65))
    ids = torch.tensor([10, 11, 12, 13])
    inputs, labels = masked_batch(tokens, ids, 1000, seed=0)
    again, labels_again = masked_batch(tokens, ids, 1000, seed=0)
    assert torch.equal(inputs, again) and torch.equal(labels, labels_again)
    chosen = labels != -100
    assert 0.05 < chosen.float().mean() < 0.3
    assert torch.equal(labels[chosen], tokens[:, :-1][chosen])
    assert (inputs[chosen] == 1000).float().mean() > 0.5  # mostly [MASK]
    assert torch.equal(inputs[~chosen], tokens[:, :-1][~chosen])
