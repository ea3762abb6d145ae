"""Validation curves of finished runs, averaged over seeds, and the paper's speed-up figure.

Pure (numpy only): the quality benchmark trains, this module only reads the ``evals``
history every run writes into its result row.

Speed-up (AutoScale paper, Sec. 5): how much sooner a mixture reaches a baseline's final
average perplexity, ``1 - tokens_needed / baseline_tokens``.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError


@dataclass
class Curve:
    """One run's validation metric at each evaluation, against tokens trained."""
    tokens: np.ndarray
    average: np.ndarray
    """Plain mean over evaluation domains (the paper's objective)."""
    per_domain: Dict[str, np.ndarray]


@dataclass
class Band:
    """Curves of several seeds on one token grid: mean and spread (std, min, max)."""
    tokens: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    per_domain_mean: Dict[str, np.ndarray]
    seeds: int


def run_curve(row: dict, tokens_per_step: int, metric: str = "perplexity") -> Curve:
    """The curve of one result row (its ``evals`` list: step + per-domain metric)."""
    evals = row.get("evals") or []
    if not evals:
        raise InputError(f"run {row.get('id', '?')!r} has no evaluation history; train it with "
                         f"eval_interval_steps > 0")
    domains = list(evals[-1][metric])
    by_step = {}
    for entry in evals:  # a resumed run may have evaluated a step twice: keep the last
        by_step[int(entry["step"])] = entry[metric]
    steps = sorted(by_step)
    per_domain = {d: np.array([float(by_step[s][d]) for s in steps]) for d in domains}
    average = np.mean(np.stack([per_domain[d] for d in domains]), axis=0)
    return Curve(np.array(steps, dtype=float) * tokens_per_step, average, per_domain)


def seed_band(curves: Sequence[Curve]) -> Band:
    """Mean and spread over seeds; all curves must share one token grid (same config)."""
    if not curves:
        raise InputError("no curves to average")
    grid = curves[0].tokens
    for curve in curves[1:]:
        if curve.tokens.shape != grid.shape or not np.array_equal(curve.tokens, grid):
            raise InputError("seed curves were evaluated at different token counts; use one "
                             "eval_interval_steps for every seed")
    stacked = np.stack([c.average for c in curves])
    domains = list(curves[0].per_domain)
    per_domain = {d: np.mean(np.stack([c.per_domain[d] for c in curves]), axis=0) for d in domains}
    return Band(grid, stacked.mean(axis=0), stacked.std(axis=0), stacked.min(axis=0),
                stacked.max(axis=0), per_domain, len(curves))


def tokens_to_reach(tokens: np.ndarray, values: np.ndarray, target: float) -> Optional[float]:
    """Tokens at which a falling curve first gets down to ``target`` (linear between
    evaluations), or None if it never does.

    A curve already at or below the target at its first evaluation returns that first
    token count: the evaluations cannot say how much earlier it got there.
    """
    below = np.nonzero(values <= target)[0]
    if below.size == 0:
        return None
    first = int(below[0])
    if first == 0:
        return float(tokens[0])
    t0, t1 = tokens[first - 1], tokens[first]
    v0, v1 = values[first - 1], values[first]
    return float(t0 + (v0 - target) / (v0 - v1) * (t1 - t0))


def speedup(candidate: Band, baseline: Band) -> Optional[float]:
    """1 - (tokens the candidate's mean curve needs to reach the baseline's final mean
    average metric) / (the baseline's tokens). None: never reached within its budget."""
    needed = tokens_to_reach(candidate.tokens, candidate.mean, float(baseline.mean[-1]))
    if needed is None:
        return None
    return 1.0 - needed / float(baseline.tokens[-1])


def final_summary(bands: Dict[str, Band]) -> List[dict]:
    """Per arm: final average metric (mean, std over seeds) and per-domain final means."""
    return [{"arm": name, "final_mean": float(b.mean[-1]), "final_std": float(b.std[-1]),
             "seeds": b.seeds, "per_domain": {d: float(v[-1]) for d, v in b.per_domain_mean.items()}}
            for name, b in bands.items()]
