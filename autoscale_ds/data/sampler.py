"""The blended stream as a torch Dataset and a resumable, data-parallel Sampler.

``BlendPlan`` holds the planned stream (``blend.build_blend``): which domain, and which of its
samples, comes at each global position t. ``BlendSampler`` walks the positions from where
training stands, shards them over data-parallel ranks with the trainer's layout
(:mod:`.layout`: at each micro-step rank r of W takes the m consecutive positions after those
of ranks 0..r-1), and yields ``(t, domain, sample)`` items; ``BlendedDataset`` turns an item
(or a bare t) into ``{"input_ids", "domain_id", "domain_sample"}``. A ``DataLoader`` with
``batch_size=m`` over it yields exactly the trainer's micro-batches; it also works with
DeepSpeed's ``engine.deepspeed_io(dataset, data_sampler=sampler)``, which builds one.

Items carry the domain and sample number, so DataLoader workers never consult a stale copy
of the plan after ``set_weights``: the sampler, in the main process, reads the current one.
"""

import hashlib
import json
import logging
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch
import torch.utils.data

from ..errors import InputError
from .blend import Blend, Stage, build_blend, check_weights
from .layout import (check_layout, micro_batch_positions, micro_steps_done,
                     samples_per_micro_step, whole_micro_steps)

logger = logging.getLogger(__name__)

PLAN_VERSION = 1  # bump when the interleave rule changes: old sampler states must not load
Item = Tuple[int, int, int]  # (global position, domain, that domain's sample number)


class DomainSource(Protocol):
    """A domain's samples: ``source[k]`` is its k-th sample (the source handles epochs)."""

    name: str

    def __getitem__(self, k: int) -> np.ndarray: ...


class BlendPlan:
    """The stream's stages and their blend; ``set_weights`` changes the weights from a
    position on without touching the samples before it."""

    def __init__(self, stages: Sequence, domain_names: Optional[Sequence[str]] = None,
                 workers: Optional[int] = None):
        self.workers = workers
        self.blend = build_blend(stages, workers)
        self.domain_names = list(domain_names) if domain_names is not None else None
        if self.domain_names is not None and len(self.domain_names) != self.blend.num_domains:
            raise InputError(f"{len(self.domain_names)} domain names for "
                             f"{self.blend.num_domains} weights per stage")

    @classmethod
    def single(cls, weights: Sequence[float], num_samples: int, **kwargs) -> "BlendPlan":
        return cls([(num_samples, weights)], **kwargs)

    def __len__(self) -> int:
        return self.blend.num_samples

    @property
    def stages(self) -> Tuple[Stage, ...]:
        return self.blend.stages

    def lookup(self, t: int) -> Tuple[int, int]:
        """(domain, that domain's sample number) at global position t."""
        if not 0 <= t < len(self):
            raise IndexError(f"position {t} outside the planned {len(self):,} samples")
        return int(self.blend.domain_index[t]), int(self.blend.domain_sample_index[t])

    def fingerprint(self) -> str:
        """Identifies the planned stream: the same stages give the same samples everywhere."""
        spec = {"version": PLAN_VERSION, "domains": self.domain_names,
                "stages": [[s.num_samples, [w.hex() for w in s.weights]] for s in self.stages]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def set_weights(self, weights: Sequence[float], at_sample: int,
                    num_samples: Optional[int] = None) -> None:
        """From global position ``at_sample`` on, draw with ``weights`` (for ``num_samples``
        more samples; default: to the planned end). Positions before it are unchanged and
        each domain's counter continues, so no sample is repeated or skipped."""
        if not 0 <= at_sample <= len(self):
            raise InputError(f"weight change at sample {at_sample:,} outside the planned "
                             f"{len(self):,} samples")
        w = check_weights(weights, "new weights")
        if len(w) != self.blend.num_domains:
            raise InputError(f"new weights name {len(w)} domains, the plan has "
                             f"{self.blend.num_domains}")
        kept: List[Stage] = []
        start = 0
        for stage in self.stages:  # the stages, cut at at_sample
            take = min(stage.num_samples, at_sample - start)
            if take > 0:
                kept.append(Stage(take, stage.weights))
            start += stage.num_samples
        tail = len(self) - at_sample if num_samples is None else int(num_samples)
        new = Stage(tail, tuple(float(x) for x in w))
        self.blend = _extend(self.blend, kept, new, at_sample, self.workers)
        logger.info("weights change at sample %d: %s", at_sample, np.round(w, 4).tolist())


def _extend(blend: Blend, kept: List[Stage], new: Stage, at: int, workers) -> Blend:
    """The blend's first ``at`` samples, followed by a new stage whose counters continue."""
    counts = np.bincount(blend.domain_index[:at], minlength=blend.num_domains)
    added = build_blend([(new.num_samples, new.weights)], workers)
    domain = np.concatenate([blend.domain_index[:at], added.domain_index])
    sample = np.concatenate([blend.domain_sample_index[:at],
                             added.domain_sample_index + counts[added.domain_index]])
    return Blend(domain, sample, tuple(kept) + (new,))


class BlendedDataset(torch.utils.data.Dataset):
    """Global position -> one training sample of the blended stream, with its domain."""

    def __init__(self, domains: Sequence[DomainSource], plan: BlendPlan):
        if len(domains) != plan.blend.num_domains:
            raise InputError(f"{len(domains)} domain sources for a plan over "
                             f"{plan.blend.num_domains} domains")
        if plan.domain_names is not None:
            names = [getattr(s, "name", None) for s in domains]
            if names != plan.domain_names:
                raise InputError(f"domain sources {names} do not match the plan's domains "
                                 f"{plan.domain_names} (same order needed)")
        self.domains = list(domains)
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, item: Union[int, Item]) -> dict:
        if isinstance(item, tuple):
            _, domain, k = item
        else:
            domain, k = self.plan.lookup(int(item))
        tokens = np.asarray(self.domains[domain][k])
        return {"input_ids": torch.as_tensor(tokens.astype(np.int64, copy=False)),
                "domain_id": int(domain), "domain_sample": int(k)}


def _distributed_defaults(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    return int(rank), int(world_size)


class BlendSampler(torch.utils.data.Sampler):
    """This rank's share of the stream from ``consumed_samples`` (global) on.

    The layout is the trainer's (:mod:`.layout`): at each micro-step the ranks together
    take the next W*m positions, rank r the m consecutive ones at offset r*m; iterate with
    a ``DataLoader(batch_size=micro_batch_size)`` to get the trainer's micro-batches
    (m = 1, the default, is the stride layout: rank r serves consumed + r, + r + W, ...).
    Every rank serves the same number, so after k micro-steps the ranks together have
    served exactly the next k*W*m positions. Positions advance in whole micro-steps:
    ``consumed_samples`` must be a multiple of W*m. Resuming from ``state_dict()`` serves
    what the uninterrupted run would have. Iterating again continues the stream; it ends at
    the last whole micro-step of the planned samples.
    """

    def __init__(self, plan: BlendPlan, rank: Optional[int] = None,
                 world_size: Optional[int] = None, consumed_samples: int = 0,
                 micro_batch_size: int = 1):
        self.plan = plan
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        check_layout(self.rank, micro_batch_size, self.world_size)
        self.micro_batch_size = int(micro_batch_size)
        self._check_position(consumed_samples)
        self.consumed_samples = int(consumed_samples)
        self._served = 0  # items handed out by this rank's iterator since consumed_samples

    def _check_position(self, consumed: int) -> None:
        if not 0 <= consumed <= len(self.plan):
            raise InputError(f"consumed samples {consumed:,} outside the planned "
                             f"{len(self.plan):,}")
        micro_steps_done(consumed, self.micro_batch_size, self.world_size)

    def _micro_steps_left(self) -> int:
        return whole_micro_steps(len(self.plan) - self.position(), self.micro_batch_size,
                                 self.world_size)

    def __len__(self) -> int:
        return self._micro_steps_left() * self.micro_batch_size

    def __iter__(self) -> Iterator[Item]:
        # a new iterator continues after what earlier ones handed out (DeepSpeed's
        # RepeatingLoader re-iterates): the stream is never served twice
        self.consumed_samples, self._served = self.position(), 0
        first = micro_steps_done(self.consumed_samples, self.micro_batch_size, self.world_size)
        for step in range(first, first + self._micro_steps_left()):
            for t in micro_batch_positions(step, self.rank, self.micro_batch_size,
                                           self.world_size):
                domain, k = self.plan.lookup(t)  # read now: a weight change applies at once
                self._served += 1
                yield t, domain, k

    def set_epoch(self, epoch: int) -> None:
        """Accepted for DistributedSampler compatibility; the stream has no epochs."""

    def position(self) -> int:
        """Global samples consumed, counting what this rank's iterator has handed out (as
        every rank serves the same count). A micro-step counts as consumed once its first
        item is handed out, so a weight change never alters a sample already served; the
        count is a whole number of micro-steps. Exact with ``num_workers=0``; DataLoader
        workers prefetch, so then pass the trainer's count to ``state_dict``."""
        started = -(-self._served // self.micro_batch_size)  # ceil: a begun micro-batch
        return self.consumed_samples + started * samples_per_micro_step(
            self.micro_batch_size, self.world_size)

    def state_dict(self, consumed_samples: Optional[int] = None) -> dict:
        consumed = self.position() if consumed_samples is None else int(consumed_samples)
        self._check_position(consumed)
        return {"consumed_samples": consumed, "fingerprint": self.plan.fingerprint(),
                "num_samples": len(self.plan),
                "stages": [[s.num_samples, list(s.weights)] for s in self.plan.stages]}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` stopped; the plan must be the one it was saved with."""
        mine = self.plan.fingerprint()
        if state.get("fingerprint") != mine:
            raise InputError(
                f"sampler state is for another plan (fingerprint {state.get('fingerprint')}, "
                f"stages {state.get('stages')}); this plan is {mine} with stages "
                f"{[[s.num_samples, list(s.weights)] for s in self.plan.stages]}. Rebuild the "
                "plan with the saved stages (re-apply weight changes) before loading")
        self._check_position(int(state["consumed_samples"]))
        self.consumed_samples = int(state["consumed_samples"])
        self._served = 0

    def set_weights(self, weights: Sequence[float], at_sample: Optional[int] = None,
                    num_samples: Optional[int] = None) -> None:
        """Change the weights from global sample ``at_sample`` (default: the first of the
        next micro-step, on every rank alike) without losing or repeating samples."""
        at = self.position() if at_sample is None else int(at_sample)
        if at < self.position():
            raise InputError(f"cannot change weights at sample {at:,}: samples up to "
                             f"{self.position():,} were already served")
        self.plan.set_weights(weights, at, num_samples)
