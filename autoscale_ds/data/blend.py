"""Which domain each sample of a weighted multi-domain stream comes from (pure numpy).

The rule: sample ``n`` (1-based) goes to the domain whose next sample is *due* first. Domain
``d``'s j-th sample (0-based) is due by ``D(d, j)``, the first ``n`` with
``floor(w_d n) >= j + 1``, and may not come before ``D(d, j - 1)``. That window keeps every
prefix within one sample of its target; we serve the earliest due date among the samples
already allowed and break ties by domain index (earliest deadline first, EDF). This is the
Balinski-Young "quota method" of apportionment, or Pfair EDF on one processor.

Guarantee: for every prefix ``n`` and domain ``d``, ``-1 < count_d(n) - n * w'_d <= 1`` (equal
to 1 only where ``n * w'_d`` is a whole number), where ``w'`` is ``w`` renormalised and rounded
to multiples of 2**-52, so ``|w' - w| <= 2**-52`` (the bound holds for ``w`` up to n * 2**-52).

Proof. Existence: domain d's samples whose windows lie inside slots ``[x, y]`` number
``max(0, c_d - 1)`` with ``c_d`` its floor crossings in ``[x, y]``; since ``c_d - 1 < w_d (y-x+1)``
and the weights sum to 1, at most ``y - x + 1`` windows fit in ``y - x + 1`` slots: Hall's
condition for intervals, so a schedule meeting every window exists. EDF with integer release
times and unit jobs meets every deadline whenever any schedule does. Served inside its
window, each count stays between ``floor(w n)`` and ``floor(w n) + 1``, hence the bound.

Megatron's ``build_blending_indices`` (serve ``argmax_d w_d max(t, 1) - count_d``) does not
keep this bound: on skewed weights a domain falls up to ~2 samples behind. So our stream is
not Megatron's; the tests compare both deviations against the C++ helper.

Speed. With numba (the ``fast`` extra) a compiled loop applies the rule slot by slot: a
branch-free scan of the domains, exact integer due dates, the stream cut into four pieces
per thread that the thread steps in turn (the CPU overlaps them), each piece after the
first started from a guess and replayed from the true state until they agree
(``_edf_kernel.py``). Without numba, or where it fails to compile, the numpy engine below
gives the same arrays (tested), more slowly; which one runs is logged once.

The numpy engine, without a Python loop per sample: (1) all samples sorted by (due date,
domain), Jefferson's order, built in O(n) from counts of due dates, no sort, on threads;
EDF equals that order except where it serves a sample before it is allowed ("early").
(2) An isolated early sample just waits for its release, the ones in between move up a
slot: a vectorised rotation. (3) Tangled early samples are replayed exactly from the last
position where EDF and the order agree until they agree again: inside a window of <= 64
positions as a bitmask EDF, vectorised over all such windows; longer runs (heavy mixtures)
step an EDF pointer with its deferred samples, all runs at once. The stream is processed
in chunks ending where EDF and the order agree, so each chunk starts exactly.
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ._edf import MAX_SAMPLES, _alloc, _edf_stream, compiled_kernel

logger = logging.getLogger(__name__)

_Q_BITS = 52  # weights are integers over 2**52: exact arithmetic, |w' - w| <= 2**-52
_WEIGHT_SUM_TOL = 1e-6

def check_weights(weights: Sequence[float], where: str = "weights") -> np.ndarray:
    """Weights as float64 normalised to sum 1; ``InputError`` names any bad value."""
    w = np.asarray(list(weights), dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise InputError(f"{where}: need at least one domain weight, got {list(weights)!r}")
    for d, value in enumerate(w):
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{where}: weight of domain {d} must be finite and >= 0, "
                             f"got {value!r}")
    total = float(w.sum())
    if abs(total - 1.0) > _WEIGHT_SUM_TOL:
        raise InputError(f"{where}: weights must sum to 1 (within {_WEIGHT_SUM_TOL}), "
                         f"got {total!r}")
    if w.size > np.iinfo(np.int16).max:
        raise InputError(f"{where}: at most {np.iinfo(np.int16).max} domains, got {w.size}")
    return w / total


def quantise_weights(weights: np.ndarray) -> np.ndarray:
    """Integer numerators over 2**52 summing exactly to 2**52 (largest remainders round up)."""
    scaled = weights * float(1 << _Q_BITS)
    numerators = np.floor(scaled).astype(np.int64)
    short = (1 << _Q_BITS) - int(numerators.sum())
    order = np.argsort(-(scaled - numerators), kind="stable")
    numerators[order[:short]] += 1
    return numerators



@dataclass(frozen=True)
class Stage:
    """``num_samples`` consecutive samples drawn with ``weights`` (one per domain)."""

    num_samples: int
    weights: Tuple[float, ...]


@dataclass
class Blend:
    """The planned stream: sample t comes from ``domain_index[t]``, as that domain's
    ``domain_sample_index[t]``-th sample (counters run on across stages)."""

    domain_index: np.ndarray
    domain_sample_index: np.ndarray
    stages: Tuple[Stage, ...]

    @property
    def num_samples(self) -> int:
        return len(self.domain_index)

    @property
    def num_domains(self) -> int:
        return len(self.stages[0].weights)

    def stage_starts(self) -> List[int]:
        return list(np.cumsum([0] + [s.num_samples for s in self.stages[:-1]]))


def _as_stage(stage, k: int) -> Stage:
    if isinstance(stage, Stage):
        num, weights = stage.num_samples, stage.weights
    else:
        try:
            num, weights = stage
        except (TypeError, ValueError):
            raise InputError(f"stage {k}: expected (num_samples, weights), got {stage!r}") from None
    if not isinstance(num, (int, np.integer)) or num < 0:
        raise InputError(f"stage {k}: number of samples must be an integer >= 0, got {num!r}")
    return Stage(int(num), tuple(float(w) for w in check_weights(weights, f"stage {k}")))


def default_workers() -> int:
    """Threads for planning: numpy releases the GIL in the array work, so cores add up."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


def blend_engine() -> str:
    """Which planner runs here: "numba" (the compiled kernel) or "numpy" (same arrays,
    slower). The first call imports numba and compiles the kernel or loads it from cache."""
    return "numba" if compiled_kernel() is not None else "numpy"


def build_blend(stages: Sequence, workers: Optional[int] = None) -> Blend:
    """Plan a stream of consecutive stages, each ``Stage`` or ``(num_samples, weights)``.

    Within a stage the EDF rule keeps every prefix of that stage within one sample of the
    stage's weights; each domain's counter continues from the previous stage, so no sample
    of a domain is repeated or skipped when the weights change.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    parsed = tuple(_as_stage(s, k) for k, s in enumerate(stages))
    if not parsed:
        raise InputError("need at least one stage")
    num_domains = len(parsed[0].weights)
    for k, stage in enumerate(parsed):
        if len(stage.weights) != num_domains:
            raise InputError(f"stage {k} has {len(stage.weights)} weights, stage 0 has "
                             f"{num_domains}")
    total = sum(s.num_samples for s in parsed)
    if total > MAX_SAMPLES:
        raise InputError(f"at most {MAX_SAMPLES:,} samples per blend, got {total:,}")
    domain = _alloc(total, np.int16)
    sample = _alloc(total, np.int64)
    used = np.zeros(num_domains, dtype=np.int64)
    start = 0
    for k, stage in enumerate(parsed):
        stop = start + stage.num_samples
        if stage.num_samples:
            dom, idx = domain[start:stop], sample[start:stop]
            _edf_stream(quantise_weights(np.asarray(stage.weights)), dom, idx, workers)
            if used.any():  # counters run on from the earlier stages
                idx += used[dom]
            if k + 1 < len(parsed):
                used += np.bincount(dom, minlength=num_domains)
        start = stop
    return Blend(domain, sample, parsed)


def blend_indices(weights: Sequence[float], num_samples: int,
                  workers: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One-stage blend: ``(domain_index int16, domain_sample_index int64)``."""
    blend = build_blend([(num_samples, weights)], workers)
    return blend.domain_index, blend.domain_sample_index


def prefix_deviation(domain_index: np.ndarray, weights: Sequence[float],
                     chunk: int = 1 << 22) -> float:
    """``max over n, d of |count_d(n) - n * w_d|`` over all prefixes, in bounded memory.

    Deviations peak just after a domain's sample (upward) or just before it (downward), so
    only the positions of each domain's samples matter: a stable sort by domain per chunk.
    """
    w = check_weights(weights)
    m = len(w)
    counts = np.zeros(m, dtype=np.int64)
    worst = 0.0
    for lo in range(0, len(domain_index), chunk):
        block = np.asarray(domain_index[lo:lo + chunk])
        if block.size and (block.min() < 0 or block.max() >= m):
            raise InputError(f"domain index outside [0, {m}) in samples [{lo}, {lo + len(block)})")
        order = np.argsort(block, kind="stable")
        per_domain = np.bincount(block, minlength=m)
        first = np.concatenate([[0], np.cumsum(per_domain)[:-1]])
        dom = block[order].astype(np.int64)
        rank = np.arange(len(order)) - first[dom] + counts[dom]  # samples of d before this one
        n_after = (order + lo + 1).astype(np.float64)  # prefix length including this sample
        up = (rank + 1) - n_after * w[dom]
        down = (n_after - 1.0) * w[dom] - rank  # just before it: the deficit peaks there
        worst = max(worst, float(up.max(initial=0.0)), float(down.max(initial=0.0)))
        counts += per_domain
    final = counts - len(domain_index) * w
    return max(worst, float(np.abs(final).max(initial=0.0)))
