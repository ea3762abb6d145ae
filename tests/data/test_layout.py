"""One data-parallel layout: the public sampler serves exactly the trainer's micro-batches."""

import json
import subprocess
import sys

import numpy as np
import pytest

from autoscale_ds.data.layout import micro_batch_positions, micro_steps_done
from autoscale_ds.errors import InputError

torch = pytest.importorskip("torch")

from autoscale_ds.data.sampler import BlendedDataset, BlendPlan, BlendSampler  # noqa: E402
from autoscale_ds.train.plan import BatchTriple, SamplePlan  # noqa: E402
from autoscale_ds.train.stream import TrainStream  # noqa: E402

DOMAINS = ["web", "code", "books"]
# (world size, micro batch, accumulation steps)
LAYOUTS = [(1, 1, 1), (1, 4, 2), (2, 1, 3), (2, 3, 2), (3, 2, 1), (4, 2, 3)]


class Source:
    """Domain d's k-th sample encodes (d, k), so a batch tells where it came from."""

    def __init__(self, name: str, d: int):
        self.name, self.d = name, d

    def __getitem__(self, k: int) -> np.ndarray:
        return np.array([self.d, k, 7, 7], dtype=np.int32)


def sources():
    return [Source(n, d) for d, n in enumerate(DOMAINS)]


def trainer_side(world, micro, accumulation, steps):
    """The trainer's stream for one layout, and the sampler's plan over the same samples."""
    triple = BatchTriple(micro, accumulation, world)
    total = steps * triple.global_batch_size
    counts = [total // 2, total // 3, total - total // 2 - total // 3]
    plan = SamplePlan(DOMAINS, dict(zip(DOMAINS, counts)), 3, triple.global_batch_size)
    blend = BlendPlan.single(plan.weights, plan.total_samples, domain_names=DOMAINS)
    return triple, plan, blend


def loader(blend, rank, world, micro, **kwargs):
    sampler = BlendSampler(blend, rank, world, micro_batch_size=micro, **kwargs)
    data = torch.utils.data.DataLoader(BlendedDataset(sources(), blend), batch_size=micro,
                                       sampler=sampler, num_workers=0)
    return sampler, data


@pytest.mark.parametrize("world,micro,accumulation", LAYOUTS)
def test_sampler_loader_yields_the_trainers_micro_batches(world, micro, accumulation):
    steps = 5
    triple, plan, blend = trainer_side(world, micro, accumulation, steps)
    for rank in range(world):
        stream = TrainStream(sources(), plan, triple, rank)
        _, data = loader(blend, rank, world, micro)
        batches = list(data)
        assert len(batches) == steps * accumulation
        for i, batch in enumerate(batches):
            step, a = divmod(i, accumulation)
            tokens, domains, positions = stream.micro_batch(step, a)
            assert positions.tolist() == stream.positions(step, a).tolist()
            start = step * triple.global_batch_size + (a * world + rank) * micro  # as documented
            assert positions.tolist() == list(range(start, start + micro))
            assert batch["input_ids"].tolist() == tokens.tolist()  # the same samples
            assert batch["domain_id"].tolist() == domains.tolist()


@pytest.mark.parametrize("world,micro,accumulation", LAYOUTS)
def test_resume_mid_run_continues_on_the_trainers_positions(world, micro, accumulation):
    steps, stop = 4, 3  # stop after 3 micro-steps: mid optimizer step when accumulating
    triple, plan, blend = trainer_side(world, micro, accumulation, steps)
    for rank in range(world):
        stream = TrainStream(sources(), plan, triple, rank)
        sampler, data = loader(blend, rank, world, micro)
        it = iter(data)
        head = [next(it)["input_ids"] for _ in range(stop)]
        state = sampler.state_dict()
        assert state["consumed_samples"] == stop * world * micro
        fresh = BlendPlan.single(plan.weights, plan.total_samples, domain_names=DOMAINS)
        resumed, rest = loader(fresh, rank, world, micro)
        resumed.load_state_dict(state)
        got = [b.tolist() for b in head] + [b["input_ids"].tolist() for b in rest]
        want = [stream.micro_batch(*divmod(i, accumulation))[0].tolist()
                for i in range(steps * accumulation)]
        assert got == want


def test_weight_change_between_micro_batches_keeps_ranks_in_step():
    world, micro = 2, 3
    plans = [BlendPlan.single([0.5, 0.3, 0.2], 120, domain_names=DOMAINS) for _ in range(world)]
    samplers = [BlendSampler(p, r, world, micro_batch_size=micro) for r, p in enumerate(plans)]
    iters = [iter(s) for s in samplers]
    heads = [[next(it) for _ in range(2 * micro)] for it in iters]  # two micro-steps each
    for s in samplers:
        assert s.position() == 2 * world * micro
        s.set_weights([0.1, 0.1, 0.8])
    tails = [list(it) for it in iters]
    positions = sorted(t for h, tl in zip(heads, tails) for t, _, _ in h + tl)
    assert positions == list(range(120))  # no repeat, no gap
    for plan, head, tail in zip(plans, heads, tails):
        assert all((d, k) == plan.lookup(t) for t, d, k in head + tail)
        assert [s.num_samples for s in plan.stages] == [12, 108]


def test_a_begun_micro_batch_counts_as_consumed():
    sampler = BlendSampler(BlendPlan.single([0.5, 0.5], 40), 1, 2, micro_batch_size=4)
    it = iter(sampler)
    assert [next(it)[0] for _ in range(2)] == [4, 5]
    assert sampler.position() == 8  # so a weight change cannot alter positions 6 and 7
    with pytest.raises(InputError, match="already served"):
        sampler.set_weights([0.9, 0.1], at_sample=6)


def test_bad_layouts_and_resume_points_are_clear_errors():
    plan = BlendPlan.single([0.5, 0.5], 100)
    with pytest.raises(InputError, match="not a whole number of micro-steps.*2 x micro batch 3"):
        BlendSampler(plan, 0, 2, consumed_samples=8, micro_batch_size=3)
    with pytest.raises(InputError, match="micro batch size"):
        BlendSampler(plan, 0, 2, micro_batch_size=0)
    with pytest.raises(InputError, match="micro batch size"):
        BlendSampler(plan, 0, 2, micro_batch_size=1.5)
    with pytest.raises(InputError, match="rank"):
        BlendSampler(plan, 3, 2, micro_batch_size=2)
    state = BlendSampler(plan, 0, 1, consumed_samples=10).state_dict()
    wider = BlendSampler(plan, 0, 4, micro_batch_size=2)  # 8 samples per micro-step
    with pytest.raises(InputError, match="consumed samples 10 .*micro-steps"):
        wider.load_state_dict(state)
    with pytest.raises(InputError, match="micro-steps"):
        wider.state_dict(consumed_samples=12)
    triple, sample_plan, _ = trainer_side(2, 2, 3, 2)
    with pytest.raises(InputError, match="accumulation index 3"):
        TrainStream(sources(), sample_plan, triple, 0).positions(0, 3)


def test_the_layout_math():
    assert list(micro_batch_positions(0, 0, 1, 3)) == [0]
    assert list(micro_batch_positions(2, 1, 1, 3)) == [7]  # m = 1: the stride layout
    assert list(micro_batch_positions(1, 2, 4, 3)) == [20, 21, 22, 23]
    assert micro_steps_done(24, 4, 3) == 2
    with pytest.raises(InputError, match="micro-step"):
        micro_batch_positions(-1, 0, 1, 1)


def test_layout_module_imports_no_torch():
    code = ("import json, sys, autoscale_ds.data.layout\n"
            "print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'torch']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
