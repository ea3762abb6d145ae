"""Branches of a WSD family: one long run per mixture, every shorter budget a decay branch.

A WSD run (warmup, stable, decay) spends most steps at the peak learning rate, and that
stable phase does not depend on how long the run will be. So the longest run of a family
keeps a checkpoint at each branch point (``keep_checkpoints_at_steps``), and a run of a
shorter budget T starts from the one at T's decay start (``branch_from``) and trains only
its own decay. Its steps before the branch point are the parent's steps, so they must be
what the branch would have trained alone:

- the same run config apart from the budget, the schedule and where things are written
  (the *lineage* fingerprint below), and the same mixture proportions;
- the same learning rate at every step before the branch point (checked step by step);
- the same samples: the branch reads the parent's blended stream, and stops at its own
  step count. With equal weights the blend's prefix does not depend on the stream's length
  (each sample is placed by the weights alone), so this is also what the branch would have
  read alone when its whole-sample budget has exactly the parent's proportions; otherwise
  (a budget rounded to whole samples differently) the branch reads the parent's order and
  its result row records the per-domain tokens it really trained on.

Each checkpoint carries a small record (``branch_point.json``, written by the run that saved
it) with what a branch checks and the stream it must read, so nothing here loads torch.
"""

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from ..atomic import atomic_write_json
from ..errors import InputError
from .config import TrainConfig
from .plan import LRSchedule

logger = logging.getLogger(__name__)

BRANCH_POINT_FILE = "branch_point.json"
BRANCH_POINT_SCHEMA = "autoscale.branch_point/v1"
_PROPORTION_TOLERANCE = 1e-6

# What a branch may set differently from its parent: its budget and schedule (both checked
# on their own), where it writes and what it logs, what it keeps and how often it evaluates
# (evaluation does not change the weights).
_BRANCH_FREE_FIELDS = ("output_dir", "progress", "run_id", "tokens_per_domain", "mixture",
                       "total_tokens", "lr_schedule", "decay_fraction", "decay_shape",
                       "warmup_fraction", "warmup_steps", "keep_checkpoints_at_steps",
                       "branch_from", "checkpoint_interval_steps", "eval_interval_steps", "monitor")


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def lineage_fingerprint(config: TrainConfig) -> str:
    """Hash of the settings a branch shares with its parent (model, data, optimizer, seed)."""
    payload = {k: v for k, v in config.to_dict().items() if k not in _BRANCH_FREE_FIELDS}
    payload["zero_stage"] = payload["zero_stage"] or 0
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class BranchPoint:
    """The record next to a checkpoint: enough for a branch to check and continue it."""

    step: int
    lineage: str
    stream_samples: Dict[str, int]
    """Samples per domain that define the blend the run reads (in domain order): its own
    plan, or for a branch its parent's."""
    budget: Dict[str, float]
    """The run's own budget in tokens per domain (its proportions are the mixture)."""
    schedule: Dict[str, object]

    @property
    def stream_domains(self) -> List[str]:
        return list(self.stream_samples)

    def stream_weights(self) -> List[float]:
        total = sum(self.stream_samples.values())
        return [n / total for n in self.stream_samples.values()]

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(**self.schedule)


def write_branch_point(tag_dir: Path, point: BranchPoint) -> None:
    atomic_write_json(tag_dir / BRANCH_POINT_FILE, {"schema": BRANCH_POINT_SCHEMA, **asdict(point)})


def read_branch_point(tag_dir: Path) -> Optional[BranchPoint]:
    """The record of one checkpoint tag; None when there is none."""
    path = tag_dir / BRANCH_POINT_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable branch point record ({exc})") from None
    if not isinstance(payload, dict) or payload.pop("schema", None) != BRANCH_POINT_SCHEMA:
        raise InputError(f"{path}: not an {BRANCH_POINT_SCHEMA} record")
    return BranchPoint(**payload)


def parent_tag_dir(config: TrainConfig) -> Path:
    return Path(config.branch_from["checkpoint_dir"]) / checkpoint_tag(config.branch_from["step"])


def resolve_branch_point(config: TrainConfig, own_checkpoints: Path) -> Tuple[BranchPoint, bool]:
    """The parent's record at the branch point, and True. A branch that already saved
    checkpoints of its own resumes from them, so when the parent's are gone by then, its
    own record (which names the same stream) serves, with False: nothing left to check."""
    parent_dir = Path(config.branch_from["checkpoint_dir"])
    if parent_dir.resolve() == own_checkpoints.resolve():
        raise InputError(f"branch_from.checkpoint_dir {parent_dir} is this run's own checkpoint "
                         "directory; a branch never writes into its parent's: give it another "
                         "output_dir")
    point = read_branch_point(parent_tag_dir(config))
    if point is not None:
        return point, True
    own = _newest_own_point(own_checkpoints)
    if own is not None:
        logger.warning("parent checkpoint %s is gone; resuming the branch from its own "
                       "checkpoints in %s", parent_tag_dir(config), own_checkpoints)
        return own, False
    raise InputError(_missing_parent_message(config))


def _missing_parent_message(config: TrainConfig) -> str:
    tag_dir, step = parent_tag_dir(config), config.branch_from["step"]
    what = "has no branch point record" if tag_dir.is_dir() else "does not exist"
    return (f"branch_from: the parent checkpoint {tag_dir} {what}; rerun the parent run "
            f"(output_dir {Path(config.branch_from['checkpoint_dir']).parent}) with "
            f"keep_checkpoints_at_steps including {step}, then this branch")


def _newest_own_point(own_checkpoints: Path) -> Optional[BranchPoint]:
    for tag_dir in sorted(own_checkpoints.glob("step_*"), reverse=True):
        point = read_branch_point(tag_dir) if tag_dir.is_dir() else None
        if point is not None:
            return point
    return None


def in_parent_order(budget: Mapping[str, float], point: BranchPoint, where: Path) -> Dict[str, float]:
    """The branch's budget with the parent's domain order (domain ids index the stream),
    refused unless it has the parent's domains and mixture proportions."""
    domains = point.stream_domains
    if sorted(budget) != sorted(domains):
        raise InputError(f"branch_from {where}: the parent trains domains {domains}, this branch "
                         f"{list(budget)}; a branch keeps its parent's mixture")
    mine, theirs = _proportions(budget), _proportions(point.budget)
    differing = [d for d in domains if not math.isclose(mine[d], theirs.get(d, 0.0),
                                                        rel_tol=_PROPORTION_TOLERANCE, abs_tol=1e-12)]
    if differing:
        shown = ", ".join(f"{d} {mine[d]:.6g} vs {theirs.get(d, 0.0):.6g}" for d in differing)
        raise InputError(f"branch_from {where}: this branch's mixture differs from its "
                         f"parent's ({shown}); a branch scales the parent's budget, it does not "
                         "change its proportions")
    return {d: budget[d] for d in domains}


def _proportions(budget: Mapping[str, float]) -> Dict[str, float]:
    total = sum(budget.values()) or 1.0
    return {d: tokens / total for d, tokens in budget.items()}


def check_branch(point: BranchPoint, config: TrainConfig, schedule: LRSchedule) -> None:
    """Refuse a parent that is not this run up to the branch point."""
    where, step = parent_tag_dir(config), config.branch_from["step"]
    if point.lineage != lineage_fingerprint(config):
        raise InputError(f"branch_from {where}: the parent was trained with another run config "
                         "(model, data, optimizer, batch or seed differ); a branch may change only "
                         "its budget, schedule, output_dir, run_id, checkpoints and eval interval")
    if step >= schedule.total_steps:
        raise InputError(f"branch_from.step {step} is not before this branch's last step: its "
                         f"budget is {schedule.total_steps} optimizer steps; branch from an "
                         "earlier step or give the branch a larger budget")
    early = [s for s in config.keep_checkpoints_at_steps if s <= step]
    if early:
        raise InputError(f"keep_checkpoints_at_steps {early} are not after the branch point {step}: "
                         "a branch trains (and can keep) only the steps after it")
    _check_same_learning_rates(point.lr_schedule(), schedule, step, where)


def _check_same_learning_rates(parent: LRSchedule, branch: LRSchedule, step: int, where: Path) -> None:
    if step > branch.stable_until and branch.kind != "cosine":
        raise InputError(f"branch_from.step {step} is after this branch's decay starts (step "
                         f"{branch.stable_until} of {branch.total_steps}); branch from step "
                         f"{branch.stable_until} or earlier")
    if step > parent.stable_until and parent.kind != "cosine":
        raise InputError(f"branch_from {where}: the parent's decay had started at step "
                         f"{parent.stable_until}, before the branch point {step}; branch from "
                         "its stable phase")
    for s in range(step):
        if not math.isclose(parent.at(s), branch.at(s), rel_tol=1e-12):
            raise InputError(
                f"branch_from {where}: the parent's learning rate at step {s} was "
                f"{parent.at(s):.6g} ({parent.kind}, {parent.warmup_steps} warmup steps), this "
                f"branch's schedule gives {branch.at(s):.6g} ({branch.kind}, "
                f"{branch.warmup_steps} warmup steps); give both the same learning_rate and "
                "warmup_steps and a schedule with a stable phase (wsd or constant)")
