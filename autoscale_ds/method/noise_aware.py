"""Noise-aware DDO: act on a weight's move from the base only as far as the noise allows.

DDO at a small budget moves each weight away from the base mixture by ``m_i = log(w_i /
base_i)``. Its sensitivity report (Monte-Carlo redraws of the noisy objectives) gives the
noise of that move, ``sd_i`` (std of the log weight over the draws). Measured on this
project's corpora, two seeds' DDO optima differ by as much as DDO moves (DESIGN.md, "Noise
is the enemy of small proxies"), so the raw optimum partly fits noise. The noise-aware
weight is the empirical-Bayes posterior mean of the move (:mod:`.shrinkage`):

    log w_i = log base_i + k_i * m_i,   k_i = tau^2 / (tau^2 + sd_i^2),   then renormalised,

so a move within noise stays near the base and a clear move is kept. Without a sensitivity
report (the noise is unknown) the DDO optimum is returned unchanged: the paper's method.
The published mixture records the unshrunk weights, the factors and the noise of each
published log weight (``k_i * sd_i``), which the noise-aware predictor reads.

The predictor's side lives here too: each domain's trend of log weight across budgets with
its noise (:func:`weight_trends`), and the extrapolated change shrunk by the trends' factors
(:func:`shrink_extrapolation`).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..formats.schemas import Mixture
from .shrinkage import ESTIMATOR, Shrinkage, shrink_toward_zero

PROVENANCE_KEY = "noise_aware"


def sensitivity_weights(mixture: Mixture) -> Optional[Dict[str, dict]]:
    """The per-domain entries of the mixture's sensitivity report, or None without one."""
    sensitivity = mixture.provenance.get("sensitivity")
    entries = sensitivity.get("weights") if isinstance(sensitivity, dict) else None
    if not isinstance(entries, dict) or set(entries) != set(mixture.weights):
        return None
    return entries


def shrink_ddo_mixture(mixture: Mixture) -> Mixture:
    """The noise-aware version of a DDO mixture (a new record; the input is unchanged)."""
    from .ddo import integer_tokens

    entries = sensitivity_weights(mixture)
    provenance = dict(mixture.provenance)
    if entries is None:
        provenance[PROVENANCE_KEY] = {"applied": False, "reason": "no sensitivity report: the "
                                      "noise is unknown, so the DDO optimum is kept"}
        return Mixture(mixture.total_tokens, dict(mixture.weights), dict(mixture.tokens),
                       mixture.method, provenance)
    domains = list(mixture.weights)
    base = np.array([float(entries[d]["base_weight"]) for d in domains])
    weights = np.array([mixture.weights[d] for d in domains])
    moves = np.log(weights / base)
    noise = [_entry_log_noise(entries[d], mixture.weights[d]) for d in domains]
    shrinkage = shrink_toward_zero(moves.tolist(), [None if sd is None else sd * sd for sd in noise])
    factors = np.array(shrinkage.factors)
    shrunk = base * np.exp(factors * moves)
    shrunk /= shrunk.sum()
    tokens = integer_tokens((shrunk * mixture.total_tokens).tolist(), mixture.total_tokens)
    provenance[PROVENANCE_KEY] = {
        "applied": True, "estimator": ESTIMATOR, "shrunk_toward": "base mixture",
        "prior_std": shrinkage.prior_std,
        "factors": dict(zip(domains, map(float, factors))),
        "unshrunk_weights": dict(mixture.weights),
        "log_noise": {d: (None if sd is None else float(k * sd))
                    for d, sd, k in zip(domains, noise, factors)},
    }
    return Mixture(mixture.total_tokens, dict(zip(domains, map(float, shrunk))),
                   dict(zip(domains, tokens)), mixture.method, provenance)


def unshrunk(mixture: Mixture) -> Mixture:
    """The plain DDO optimum behind a noise-aware mixture (itself when it was not shrunk)."""
    record = mixture.provenance.get(PROVENANCE_KEY)
    if not (isinstance(record, dict) and record.get("applied")):
        return mixture
    from .ddo import integer_tokens

    domains = list(mixture.weights)
    weights = [float(record["unshrunk_weights"][d]) for d in domains]
    tokens = integer_tokens([w * mixture.total_tokens for w in weights], mixture.total_tokens)
    provenance = {k: v for k, v in mixture.provenance.items() if k != PROVENANCE_KEY}
    return Mixture(mixture.total_tokens, dict(zip(domains, weights)), dict(zip(domains, tokens)),
                   mixture.method, provenance)


def log_weight_noise(mixture: Mixture) -> Dict[str, Optional[float]]:
    """Std of each published log weight: from the noise-aware record, else the sensitivity
    report (``log_noise``, or ``std / weight`` in reports written before it), else None."""
    record = mixture.provenance.get(PROVENANCE_KEY)
    if isinstance(record, dict) and record.get("applied") and isinstance(record.get("log_noise"), dict):
        return {d: _number(record["log_noise"].get(d)) for d in mixture.weights}
    entries = sensitivity_weights(mixture)
    if entries is None:
        return {d: None for d in mixture.weights}
    return {d: _entry_log_noise(entries[d], mixture.weights[d]) for d in mixture.weights}


def _entry_log_noise(entry: dict, weight: float) -> Optional[float]:
    log_noise = _number(entry.get("log_noise"))
    if log_noise is not None:
        return log_noise
    std = _number(entry.get("std"))
    return None if std is None or weight <= 0 else std / weight


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# ----------------------------------------------------- trends across budgets (predict)

@dataclass
class TrendEstimate:
    """Each domain's trend of log weight per doubling of budget, with its noise."""

    domains: List[str]
    slope: np.ndarray
    variance: List[Optional[float]]
    """Sampling variance of each slope; None where a budget's noise is unknown."""
    rms_log_residual: np.ndarray


def weight_trends(ordered: Sequence[Mixture]) -> TrendEstimate:
    """Per domain, the weighted least-squares slope of log weight against log2 budget.

    Each budget's point is weighted by the inverse variance of its log weight (the noise the
    mixture records, :func:`log_weight_noise`). With three or more
    budgets the slope's variance is inflated by the residual when the points scatter more
    about the line than their noise says (reduced chi-square > 1).
    """
    domains = list(ordered[0].weights)
    x = np.log2([float(m.total_tokens) for m in ordered])
    noise = [log_weight_noise(m) for m in ordered]
    slopes, variances, residuals = [], [], []
    for domain in domains:
        y = np.log([m.weights[domain] for m in ordered])
        sds = [n[domain] for n in noise]
        slope, variance, residual = _weighted_slope(x, y, None if None in sds else np.array(sds))
        slopes.append(slope)
        variances.append(variance)
        residuals.append(residual)
    return TrendEstimate(domains, np.array(slopes), variances, np.array(residuals))


def _weighted_slope(x: np.ndarray, y: np.ndarray, sd: Optional[np.ndarray]):
    """(slope, its variance or None, RMS residual) of y on x."""
    if sd is None or not np.any(sd > 0):
        line = np.polyfit(x, y, 1)
        residual = y - np.polyval(line, x)
        return float(line[0]), (None if sd is None else 0.0), float(np.sqrt(np.mean(residual**2)))
    # A budget whose weight carries no noise (e.g. pinned at a bound in every draw) would get
    # an infinite weight; the smallest positive noise of the others stands in for it.
    sd = np.where(sd > 0, sd, sd[sd > 0].min())
    w = 1.0 / sd**2
    x_mean = float(np.sum(w * x) / w.sum())
    y_mean = float(np.sum(w * y) / w.sum())
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    slope = float(np.sum(w * (x - x_mean) * (y - y_mean)) / sxx)
    residual = y - (y_mean + slope * (x - x_mean))
    variance = 1.0 / sxx
    if len(x) > 2:
        reduced_chi2 = float(np.sum(w * residual**2)) / (len(x) - 2)
        variance *= max(1.0, reduced_chi2)
    return slope, variance, float(np.sqrt(np.mean(residual**2)))


def shrink_extrapolation(raw_weights: np.ndarray, last: Mixture,
                         shrinkage: Optional[Shrinkage]) -> np.ndarray:
    """Keep the share ``k_i`` of each domain's extrapolated log change past the largest
    budget: ``log w_i = log w_last,i + k_i (log w_raw,i - log w_last,i)``, renormalised."""
    if shrinkage is None or all(k == 1.0 for k in shrinkage.factors):
        return raw_weights  # bit for bit the paper's rule
    last_weights = np.array([last.weights[d] for d in last.weights])
    factors = np.array(shrinkage.factors)
    shrunk = last_weights * np.exp(factors * (np.log(raw_weights) - np.log(last_weights)))
    return shrunk / shrunk.sum()
