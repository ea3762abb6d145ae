"""One run per mixture, every smaller budget a decay branch: the WSD proxy plan.

Under a warmup-stable-decay schedule (Hu et al. 2024, MiniCPM; Hägele et al. 2024) the
stable phase does not depend on how long a run will be. So the pipeline trains each mixture
of its plan (the base run per seed, each perturbed run) once, to the largest budget, keeping
a checkpoint where each smaller budget's decay starts; the run of that mixture at a smaller
budget branches from it and trains only its own decay. A perturbed run at budget B and the
one at 2B have the same proportions, so they are one family.

Every run of a family gets one warmup (in steps, from the smallest budget), and every
budget's quantities are the smallest budget's scaled, so their proportions are the parent's
exactly (the trainer refuses a branch that changes them). Each budget's results are still an
ordinary runs file, so ``ddo`` and ``predict`` are unchanged; DDO takes a domain within one
sample of the base run's count as unchanged (a stream's prefix is within one sample of exact).
"""

import logging
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

from ..errors import InputError
from ..train.branch import checkpoint_tag, read_branch_point
from ..train.config import TrainConfig
from ..train.plan import plan_schedule
from .sweep import ProxyRun

logger = logging.getLogger(__name__)

PROXY_SCHEDULES = ("wsd", "cosine")


def link_wsd_family(plans: Dict[float, List[ProxyRun]]) -> None:
    """Turn per-budget plans (same run ids at every budget) into WSD families, in place: the
    largest budget's runs become parents that keep a checkpoint at every branch point, the
    other runs branches from them.

    Every run of a family gets the smallest budget's whole-sample quantities scaled by its
    budget's ratio, so its proportions are the parent's exactly; with whole-number budget
    ratios (x2 spacing) the quantities stay whole samples filling whole steps, and the
    parent's stream passes through each branch's exact counts."""
    budgets = sorted(plans)
    smallest, largest = budgets[0], budgets[-1]
    family_tokens = {run.run_id: run.config.tokens_per_domain for run in plans[smallest]}
    warmup_steps = shared_warmup_steps(plans[smallest])
    if any(budget % smallest for budget in budgets):
        logger.warning("budgets %s are not whole multiples of the smallest: the WSD branches' "
                       "quantities are not whole samples, so a branch trains within one sample "
                       "per domain of its plan", [f"{b:g}" for b in budgets])
    for budget in budgets:
        for run in plans[budget]:
            tokens = _scaled(family_tokens[run.run_id], budget / smallest)
            run.config = _wsd(run.config, tokens, warmup_steps)
    parents = {run.run_id: run for run in plans[largest]}
    branch_points: Dict[str, List[int]] = {run_id: [] for run_id in parents}
    for budget in budgets[:-1]:
        for run in plans[budget]:
            parent = parents.get(run.run_id)
            if parent is None:
                raise InputError(f"run {run.run_id} at {budget:g} tokens has no run of the same "
                                 f"mixture at the largest budget {largest:g} to branch from")
            step = _schedule(run).stable_until
            run.config = replace(run.config, branch_from={
                "checkpoint_dir": str(parent.output_dir / "checkpoints"), "step": step})
            branch_points[run.run_id].append(step)
    for run in plans[largest]:
        run.config = replace(run.config,
                             keep_checkpoints_at_steps=sorted(set(branch_points[run.run_id])))


def _scaled(tokens: Dict[str, float], scale: float) -> Dict[str, float]:
    if float(scale).is_integer():  # whole samples stay whole
        return {d: int(n) * int(scale) for d, n in tokens.items()}
    return {d: n * scale for d, n in tokens.items()}


def shared_warmup_steps(smallest_budget_runs: List[ProxyRun]) -> int:
    """One warmup for a whole family, so every step before a branch point trains at the same
    learning rate in the parent and in the branch: ``warmup_steps`` when the train settings
    give it, else ``warmup_fraction`` of the smallest budget's shortest run."""
    first = smallest_budget_runs[0].config
    if first.warmup_steps is not None:
        return int(first.warmup_steps)
    shortest = min(run.total_steps for run in smallest_budget_runs)
    return max(1, round(first.warmup_fraction * shortest))


def _wsd(config: TrainConfig, tokens: Dict[str, float], warmup_steps: int) -> TrainConfig:
    return replace(config, tokens_per_domain=tokens, lr_schedule="wsd", warmup_steps=warmup_steps)


def _schedule(run: ProxyRun):
    """The trainer's own schedule of this run (so the branch point is its decay start)."""
    config = run.config
    return plan_schedule(config.lr_schedule, run.total_steps,
                         config.learning_rate, config.learning_rate * config.min_lr_ratio,
                         config.warmup_fraction, config.warmup_steps, config.decay_fraction,
                         config.decay_shape)


def with_parent_or_from_scratch(run: ProxyRun) -> ProxyRun:
    """A branch whose parent checkpoint is gone (deleted, or the parent failed) and that has
    no checkpoint of its own is recomputed from scratch with the same schedule, never
    skipped: its stable phase is the parent's, trained again."""
    branch = run.config.branch_from
    if not branch:
        return run
    parent_tag = Path(branch["checkpoint_dir"]) / checkpoint_tag(branch["step"])
    own = any(read_branch_point(tag) for tag in (run.output_dir / "checkpoints").glob("step_*")
              if tag.is_dir())
    if own or read_branch_point(parent_tag) is not None:
        return run
    logger.warning("run %s: its parent checkpoint %s is missing; training it from scratch "
                   "(the same WSD schedule, so the same run, at its full cost)", run.run_id,
                   parent_tag)
    run.config = replace(run.config, branch_from=None)
    return run
