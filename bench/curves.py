"""Validation curves of finished runs, averaged over seeds, the paper's speed-up figure,
and the figures that make a mixture comparison mean something (DESIGN.md, "Measuring a
mixture"): paired differences with a t-interval, epochs read, one eval set, noise.

Pure (numpy and scipy only), and bench-only: the benchmarks train, this module only reads the result rows
every run writes (its ``evals`` history, ``epochs``, ``eval_set``, ``eval_halves``, timings).

Speed-up (AutoScale paper, Sec. 5): how much sooner a mixture reaches a baseline's final
average perplexity, ``1 - tokens_needed / baseline_tokens``.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from autoscale_ds.errors import InputError
from autoscale_ds.formats.schemas import group_by_eval_set, row_eval_fingerprint

MAX_FRESH_EPOCHS = 1.0
"""A domain read more than once is a repetition experiment, not a mixture comparison."""


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


def per_seed_speedups(candidate: Sequence[Curve], baseline: Sequence[Curve]) -> List[Optional[float]]:
    """The speed-up seed by seed: curves at the same index share a seed (same init and sample
    order in both arms), so each value compares the mixtures and nothing else."""
    if len(candidate) != len(baseline):
        raise InputError(f"paired speed-ups need the same seeds in both arms, got "
                         f"{len(candidate)} and {len(baseline)} curves")
    return [speedup(seed_band([a]), seed_band([b])) for a, b in zip(candidate, baseline)]


# ---------------------------------------------------------------- paired comparison

@dataclass
class PairedDifference:
    """candidate - baseline of one final metric, seed by seed (same seeds in both arms)."""
    per_seed: List[float]
    mean: float
    interval: Optional[Tuple[float, float]]
    """Two-sided t-interval of the mean difference over seeds; None with one seed (no
    spread to estimate the noise from)."""
    confidence: float
    relative: float
    """mean difference / the baseline's mean (a fraction; negative: candidate is lower)."""

    def verdict(self, lower_is_better: bool = True) -> str:
        """'better' / 'worse' when the interval excludes 0, else 'within noise'."""
        if self.interval is None:
            return "unknown (1 seed)"
        low, high = self.interval
        if low <= 0.0 <= high:
            return "within noise"
        return "better" if (high < 0.0) == lower_is_better else "worse"


def paired_difference(candidate: Sequence[float], baseline: Sequence[float],
                      confidence: float = 0.90) -> PairedDifference:
    """Mean of the per-seed differences with a t-interval over seeds: pairing removes the
    seed-to-seed spread both arms share (init, sample order), which unpaired means keep."""
    if len(candidate) != len(baseline) or not candidate:
        raise InputError(f"a paired difference needs one value per seed in both arms, got "
                         f"{len(candidate)} and {len(baseline)}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    diffs = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    mean = float(diffs.mean())
    interval = None
    if diffs.size > 1:
        half_width = float(stats.t.ppf(0.5 + confidence / 2, diffs.size - 1)
                           * diffs.std(ddof=1) / np.sqrt(diffs.size))
        interval = (mean - half_width, mean + half_width)
    return PairedDifference([float(d) for d in diffs], mean, interval, confidence,
                            mean / float(np.mean(baseline)))


def final_averages(curves: Sequence[Curve]) -> List[float]:
    """Each run's last evaluation of the average metric (the objective at its budget)."""
    return [float(c.average[-1]) for c in curves]


def row_objective(row: dict) -> float:
    """A result row's objective: the plain mean of its final per-domain ``eval`` metric."""
    values = [float(v) for v in (row.get("eval") or {}).values()]
    if not values:
        raise InputError(f"run {row.get('id', '?')!r} has no final evaluation (status "
                         f"{row.get('status', '?')!r})")
    return float(np.mean(values))


@dataclass
class SeedSpread:
    """One arm's objective over seeds: mean, sample std (n - 1) and std / mean."""
    mean: float
    std: Optional[float]
    relative_std: Optional[float]
    """None with one seed."""


def seed_spread(values: Sequence[float]) -> SeedSpread:
    if not values:
        raise InputError("no values to measure a spread of")
    mean = float(np.mean(values))
    if len(values) < 2:
        return SeedSpread(mean, None, None)
    std = float(np.std(values, ddof=1))
    return SeedSpread(mean, std, std / mean)


# ---------------------------------------------------------------- what the runs read and saw

def run_epochs(row: dict, train_tokens_available: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Passes over each domain's training data: the row's ``epochs`` when it has them, else
    its ``train_tokens`` / the tokens the domain has (rows written before epochs existed)."""
    if row.get("epochs"):
        return {d: float(e) for d, e in row["epochs"].items()}
    if train_tokens_available is None:
        raise InputError(f"run {row.get('id', '?')!r} records no epochs; pass the manifest's "
                         "train tokens per domain to compute them")
    missing = [d for d in row.get("train_tokens", {}) if not train_tokens_available.get(d)]
    if missing:
        raise InputError(f"run {row.get('id', '?')!r}: the manifest gives no train tokens for "
                         f"{missing}; cannot compute epochs")
    return {d: float(n) / float(train_tokens_available[d]) for d, n in row["train_tokens"].items()}


def max_epochs(rows: Sequence[dict], train_tokens_available: Optional[Mapping[str, float]] = None
               ) -> Dict[str, float]:
    """Per domain, the most passes any of ``rows`` made over its data."""
    most: Dict[str, float] = {}
    for row in rows:
        for domain, epochs in run_epochs(row, train_tokens_available).items():
            most[domain] = max(most.get(domain, 0.0), epochs)
    return most


def repeated_domains(epochs: Mapping[str, float], limit: float = MAX_FRESH_EPOCHS) -> List[str]:
    """Domains read more than ``limit`` times (their tokens were seen again)."""
    return [d for d, e in epochs.items() if e > limit]


def shared_eval_fingerprint(rows: Mapping[str, dict]) -> Optional[str]:
    """The one eval-set fingerprint of every row (named by the caller), None when no row
    records one (runs trained before eval sets were fingerprinted).

    Raises InputError naming the runs when they were measured on different eval sets, or
    when only some rows record one: those were measured on an eval set that cannot be shown
    to be the same (older code re-drew it per seed).
    """
    groups = group_by_eval_set((name, row_eval_fingerprint(row)) for name, row in rows.items())
    if len(groups) <= 1:
        return next(iter(groups), None)
    summary = "; ".join(f"{_short(fp)}: {', '.join(names)}" for fp, names in groups.items())
    raise InputError(f"these runs were measured on different eval sets and cannot be compared "
                     f"({summary}); delete the runs of the odd set out (their directories) and "
                     f"rerun so that every run is measured on one eval set")


def _short(fingerprint: Optional[str]) -> str:
    return "no recorded eval set" if fingerprint is None else f"eval set {fingerprint[:12]}"


# ---------------------------------------------------------------- noise figures

def halves_spread(halves: Sequence[Mapping[str, float]]) -> float:
    """Relative difference of the average metric on two disjoint halves of one eval set:
    ``|avg(h0) - avg(h1)| / mean(avg(h0), avg(h1))``. It measures the eval set's own sampling
    error (about 1.6x the full set's sampling std, a conservative figure)."""
    if len(halves) != 2:
        raise InputError(f"eval_halves must hold exactly two halves, got {len(halves)}")
    if set(halves[0]) != set(halves[1]) or not halves[0]:
        raise InputError(f"the two eval halves must cover the same domains, got "
                         f"{sorted(halves[0])} and {sorted(halves[1])}")
    first, second = (float(np.mean([float(v) for v in h.values()])) for h in halves)
    return abs(first - second) / ((first + second) / 2)


def halves_summary(rows: Sequence[dict]) -> Optional[dict]:
    """Mean and max of :func:`halves_spread` over the rows that record ``eval_halves``
    (None when none does)."""
    spreads = [halves_spread(r["eval_halves"]) for r in rows if r.get("eval_halves")]
    if not spreads:
        return None
    return {"runs": len(spreads), "mean": float(np.mean(spreads)), "max": float(np.max(spreads))}


def eval_time_share(rows: Sequence[dict]) -> Optional[dict]:
    """Mean share of a run's wall time spent evaluating, over rows that record both times
    (None when none does)."""
    shares = [float(r["eval_seconds"]) / float(r["wall_seconds"]) for r in rows
              if r.get("eval_seconds") is not None and r.get("wall_seconds")]
    if not shares:
        return None
    return {"runs": len(shares), "mean": float(np.mean(shares)), "max": float(np.max(shares))}


def max_weight_difference(first: Mapping[str, float], second: Mapping[str, float]) -> Tuple[float, str]:
    """The largest ``|w1 - w2|`` over domains of two mixtures, and its domain."""
    if set(first) != set(second) or not first:
        raise InputError(f"mixtures to compare must have the same domains, got {sorted(first)} "
                         f"and {sorted(second)}")
    domain = max(first, key=lambda d: abs(first[d] - second[d]))  # ties: the first listed
    return abs(float(first[domain]) - float(second[domain])), domain
