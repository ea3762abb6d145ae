"""Pure arithmetic of a training run: samples per domain, the batch triple, LR schedule.

No torch here: the plan is checked (and shown to users) before any process group starts.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping

from ..errors import InputError


@dataclass(frozen=True)
class BatchTriple:
    """DeepSpeed's train_batch_size = micro_batch_size x accumulation_steps x world_size."""

    micro_batch_size: int
    accumulation_steps: int
    world_size: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size


def derive_batch_triple(global_batch_size: int, micro_batch_size: int, world_size: int) -> BatchTriple:
    """Accumulation follows from the one global setting, whatever the number of ranks."""
    per_step = micro_batch_size * world_size
    if global_batch_size % per_step:
        raise InputError(
            f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size "
            f"{micro_batch_size} x world size {world_size} = {per_step}; choose a global batch "
            f"of {max(per_step, global_batch_size // per_step * per_step)} or change the micro batch")
    return BatchTriple(micro_batch_size, global_batch_size // per_step, world_size)


@dataclass(frozen=True)
class SamplePlan:
    domains: List[str]
    samples_per_domain: Dict[str, int]
    seq_len: int
    global_batch_size: int

    @property
    def total_samples(self) -> int:
        return sum(self.samples_per_domain.values())

    @property
    def total_steps(self) -> int:
        return self.total_samples // self.global_batch_size

    @property
    def tokens_per_domain(self) -> Dict[str, int]:
        return {d: n * self.seq_len for d, n in self.samples_per_domain.items()}

    @property
    def weights(self) -> List[float]:
        return [self.samples_per_domain[d] / self.total_samples for d in self.domains]


def plan_samples(tokens_per_domain: Mapping[str, float], seq_len: int,
                 global_batch_size: int) -> SamplePlan:
    """Whole samples per domain, trimmed so the total fills whole optimizer steps.

    A budget becomes ``floor(tokens / seq_len)`` samples; the few samples (fewer than one
    global batch) that would not fill a last step are taken one at a time from the largest
    domain, so every step is full and each domain's consumed tokens are known in advance.
    """
    domains = list(tokens_per_domain)
    samples = {d: int(tokens_per_domain[d] // seq_len) for d in domains}
    for _ in range(sum(samples.values()) % global_batch_size):
        largest = max(domains, key=lambda d: samples[d])  # first of equals: deterministic
        samples[largest] -= 1
    plan = SamplePlan(domains, samples, seq_len, global_batch_size)
    if plan.total_steps < 1:
        raise InputError(f"the budget of {sum(tokens_per_domain.values()):,.0f} tokens is less than "
                         f"one optimizer step ({global_batch_size} x {seq_len} tokens)")
    return plan


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float,
                     min_lr: float) -> float:
    """Linear warmup to ``peak_lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
