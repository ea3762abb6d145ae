"""Pure arithmetic of a training run: samples per domain, the batch triple, LR schedules.

No torch here: the plan is checked (and shown to users) before any process group starts.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

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


LR_SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")


def learning_rate_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float,
                     min_lr: float, schedule: str = "cosine", decay_steps: int = 0,
                     shape: str = "linear") -> float:
    """The learning rate of optimizer step ``step`` (0-based), after a linear warmup to
    ``peak_lr`` over ``warmup_steps``:

    - ``cosine``: cosine decay to ``min_lr`` at ``total_steps``;
    - ``constant``: ``peak_lr`` to the end;
    - ``wsd`` (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): ``peak_lr`` until the last
      ``decay_steps`` steps, which fall to ``min_lr`` -- ``linear`` or ``1-sqrt`` (Hägele et
      al. 2024): the stable phase does not depend on the run's length, so runs of several
      budgets can share it and branch off into their own decay.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    if schedule == "wsd":
        return _wsd_decay(step, total_steps, peak_lr, min_lr, decay_steps, shape)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _wsd_decay(step: int, total_steps: int, peak_lr: float, min_lr: float, decay_steps: int,
               shape: str) -> float:
    decay_start = total_steps - decay_steps
    if step < decay_start or decay_steps <= 0:
        return peak_lr
    # Counted so that the first decay step already lies below the peak and the run's last
    # step (total_steps - 1) trains at exactly min_lr: all decay_steps steps decay.
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    remaining = 1.0 - (math.sqrt(progress) if shape == "1-sqrt" else progress)
    return min_lr + (peak_lr - min_lr) * remaining


@dataclass(frozen=True)
class LRSchedule:
    """One run's learning-rate schedule, in optimizer steps."""

    kind: str
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    decay_steps: int = 0
    """wsd only: the last steps that decay to ``min_lr``."""
    shape: str = "linear"

    def at(self, step: int) -> float:
        return learning_rate_at(step, self.total_steps, self.warmup_steps, self.peak_lr,
                                self.min_lr, self.kind, self.decay_steps, self.shape)

    @property
    def stable_until(self) -> int:
        """First step that is not at the peak after warmup (the decay's start)."""
        if self.kind == "constant":
            return self.total_steps
        if self.kind == "wsd":
            return self.total_steps - self.decay_steps
        return self.warmup_steps


def plan_schedule(kind: str, total_steps: int, peak_lr: float, min_lr: float,
                  warmup_fraction: float, warmup_steps: Optional[int] = None,
                  decay_fraction: float = 0.2, shape: str = "linear") -> LRSchedule:
    """The schedule of a run of ``total_steps``: warmup from ``warmup_steps`` when given
    (one warmup shared by runs of different lengths), else from ``warmup_fraction``; the wsd
    decay is ``decay_fraction`` of this run's own steps."""
    if warmup_steps is None:
        warmup_steps = max(1, round(warmup_fraction * total_steps))
    decay_steps = max(1, round(decay_fraction * total_steps)) if kind == "wsd" else 0
    if warmup_steps + decay_steps > total_steps:
        decay = f" + {decay_steps} decay steps ({decay_fraction:g} x {total_steps})" \
            if decay_steps else ""
        raise InputError(
            f"{warmup_steps} warmup steps{decay} exceed the run's {total_steps} optimizer "
            f"steps; lower warmup_steps / warmup_fraction{' or decay_fraction' if decay else ''}, "
            "or give the run a larger budget")
    return LRSchedule(kind, total_steps, warmup_steps, peak_lr, min_lr, decay_steps, shape)
