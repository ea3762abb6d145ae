"""The blended stream through torch: data-parallel shards, resume, weight changes, loaders."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from autoscale_ds.data.blend import prefix_deviation  # noqa: E402
from autoscale_ds.data.sampler import BlendedDataset, BlendPlan, BlendSampler  # noqa: E402
from autoscale_ds.errors import InputError  # noqa: E402

WEIGHTS = [0.45, 0.3, 0.15, 0.1]
NAMES = ["web", "code", "books", "wiki"]


class Source:
    """Domain d's k-th sample: 6 tokens encoding (d, k), so a batch tells where it came from."""

    def __init__(self, name: str, d: int):
        self.name, self.d = name, d

    def __getitem__(self, k: int) -> np.ndarray:
        return np.array([self.d, k, 0, 0, 0, 0], dtype=np.int32)


def make(num_samples=2000, weights=WEIGHTS):
    plan = BlendPlan.single(weights, num_samples, domain_names=NAMES)
    return plan, BlendedDataset([Source(n, d) for d, n in enumerate(NAMES)], plan)


def served(sampler, count=None):
    items = list(sampler)
    return items if count is None else items[:count]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_partition_the_stream_prefix(world):
    plan, _ = make(1001)
    shards = [served(BlendSampler(plan, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank serves the same count
    positions = sorted(t for s in shards for t, _, _ in s)
    assert positions == list(range(len(shards[0]) * world))  # no repeat, no gap
    for s in shards:
        for t, d, k in s:
            assert (d, k) == plan.lookup(t)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=st.integers(1, 4), stop=st.integers(0, 300), skip=st.integers(0, 600))
def test_resume_serves_what_the_uninterrupted_run_would(world, stop, skip):
    plan, _ = make(1500)
    start = (skip // world) * world  # runs resume on a step boundary: a multiple of W
    for rank in range(world):
        whole = BlendSampler(plan, rank, world, consumed_samples=start)
        expected = served(whole)
        first = BlendSampler(plan, rank, world, consumed_samples=start)
        it = iter(first)
        head = [next(it) for _ in range(min(stop, len(first)))]
        state = first.state_dict()
        assert state["consumed_samples"] == start + len(head) * world
        resumed = BlendSampler(make(1500)[0], rank, world)  # a fresh process, same plan
        resumed.load_state_dict(state)
        assert head + served(resumed) == expected


def test_iterating_again_continues_the_stream():
    plan, _ = make(100)
    sampler = BlendSampler(plan, 0, 2)
    it = iter(sampler)
    head = [next(it) for _ in range(10)]
    rest = list(sampler)  # a new iterator, as DeepSpeed's RepeatingLoader makes
    assert [t for t, _, _ in head + rest] == list(range(0, 100, 2))
    assert list(sampler) == [] and len(sampler) == 0


def test_loading_into_another_plan_is_a_clear_error():
    plan, _ = make(1000)
    state = BlendSampler(plan, 0, 1).state_dict()
    other = BlendSampler(BlendPlan.single([0.25] * 4, 1000, domain_names=NAMES), 0, 1)
    with pytest.raises(InputError, match="another plan"):
        other.load_state_dict(state)
    longer = BlendSampler(BlendPlan.single(WEIGHTS, 1200, domain_names=NAMES), 0, 1)
    with pytest.raises(InputError, match="another plan"):
        longer.load_state_dict(state)


def test_weight_change_mid_stream_keeps_the_past_and_the_counters():
    plan, dataset = make(3000)
    before = plan.blend.domain_index.copy()
    sampler = BlendSampler(plan, 0, 2)
    it = iter(sampler)
    head = [next(it) for _ in range(400)]  # 800 global samples consumed
    sampler.set_weights([0.1, 0.1, 0.1, 0.7])
    tail = list(it)  # the same iterator continues with the new weights
    assert np.array_equal(plan.blend.domain_index[:800], before[:800])
    assert [s.num_samples for s in plan.stages] == [800, 2200]
    dom, idx = plan.blend.domain_index, plan.blend.domain_sample_index
    for d in range(4):  # no sample of a domain repeated or skipped across the change
        assert np.array_equal(idx[dom == d], np.arange(np.sum(dom == d)))
    assert prefix_deviation(dom[800:], [0.1, 0.1, 0.1, 0.7]) <= 1.0 + 1e-9
    assert [(d, k) for _, d, k in head + tail] == [plan.lookup(t) for t, _, _ in head + tail]
    assert all(dataset[t]["domain_id"] == d for t, d, _ in tail[:50])
    with pytest.raises(InputError, match="already served"):
        sampler.set_weights(WEIGHTS, at_sample=100)


def test_resume_after_a_weight_change_needs_the_same_change():
    plan, _ = make(2000)
    sampler = BlendSampler(plan, 0, 1, consumed_samples=500)
    sampler.set_weights([0.7, 0.1, 0.1, 0.1])
    state = sampler.state_dict()
    again = BlendPlan.single(WEIGHTS, 2000, domain_names=NAMES)
    with pytest.raises(InputError, match="re-apply weight changes"):
        BlendSampler(again, 0, 1).load_state_dict(state)
    again.set_weights([0.7, 0.1, 0.1, 0.1], at_sample=500)
    resumed = BlendSampler(again, 0, 1)
    resumed.load_state_dict(state)
    assert served(resumed) == served(sampler)


def test_plain_dataloader_batches_carry_their_domains():
    plan, dataset = make(1000)
    sampler = BlendSampler(plan, rank=1, world_size=2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=0)
    positions = list(range(1, 1000, 2))
    for b, batch in enumerate(loader):
        batch_positions = positions[b * 8:(b + 1) * 8]
        want = [plan.lookup(t) for t in batch_positions]
        assert batch["input_ids"].dtype == torch.long
        assert batch["input_ids"].shape == (len(want), 6)
        assert batch["domain_id"].tolist() == [d for d, _ in want]
        assert batch["domain_sample"].tolist() == [k for _, k in want]
        assert batch["input_ids"][:, 0].tolist() == [d for d, _ in want]  # the source's own
        assert batch["input_ids"][:, 1].tolist() == [k for _, k in want]
    assert sampler.state_dict()["consumed_samples"] == 1000


def test_dataset_by_position_and_checks():
    plan, dataset = make(100)
    assert len(dataset) == 100
    item = dataset[7]
    assert (item["domain_id"], item["domain_sample"]) == plan.lookup(7)
    with pytest.raises(IndexError):
        dataset[100]
    with pytest.raises(InputError, match="do not match"):
        BlendedDataset([Source(n, d) for d, n in enumerate(reversed(NAMES))], plan)
    with pytest.raises(InputError, match="3 domain sources"):
        BlendedDataset([Source(n, d) for d, n in enumerate(NAMES[:3])], plan)


def test_defaults_without_torch_distributed_and_bad_ranks():
    plan, _ = make(10)
    sampler = BlendSampler(plan)
    assert (sampler.rank, sampler.world_size) == (0, 1) and len(sampler) == 10
    with pytest.raises(InputError, match="rank"):
        BlendSampler(plan, rank=2, world_size=2)
    with pytest.raises(InputError, match="consumed"):
        BlendSampler(plan, consumed_samples=11)


def test_deepspeed_builds_its_loader_from_the_sampler():
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.runtime.dataloader import DeepSpeedDataLoader

    plan, dataset = make(64)
    sampler = BlendSampler(plan, 0, 1)
    loader = DeepSpeedDataLoader(dataset, batch_size=4, pin_memory=False, local_rank=0,
                                 tput_timer=None, data_sampler=sampler, num_local_io_workers=0)
    domains = [d for batch in loader for d in batch["domain_id"].tolist()]
    assert domains == [plan.lookup(t)[0] for t in range(64)] and deepspeed is not None
