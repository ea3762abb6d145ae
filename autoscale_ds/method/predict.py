"""AutoScale: extrapolate DDO-optimal domain quantities to a larger budget.

Theory (Kang et al. 2025, Thm. 1) makes ``log N_i*`` linear in one shared coordinate ``s``
as the budget grows. With optima at budgets ``N^(1) < N^(2)``:

    N_i(s) = N_i^(1) * (N_i^(2) / N_i^(1))^s        (s = 0, 1 give the inputs back)

The paper's "next scale" is ``s = 2``. We also solve ``sum_i N_i(s) = N_T`` for ``s`` so
users ask for the budget they will train on. With three or more budgets the same model is
fitted by least squares, each extra budget getting its own coordinate, and the residual is
a consistency check.

Small-proxy trends can be noise; the extrapolation report makes every move visible and the
guards (a weight floor, a cap on the change per doubling of budget) bound it.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy.optimize import brentq, least_squares

from .ddo import short_fingerprint
from ..errors import InfeasibleError, InputError
from ..formats.schemas import Mixture
from .noise_aware import TrendEstimate, shrink_extrapolation, weight_trends
from .shrinkage import ESTIMATOR, Shrinkage, shrink_toward_zero
from ..tables import human_tokens

logger = logging.getLogger(__name__)

_ALS_ITERATIONS = 30
# A predicted weight within 1% of the proxy range is not flagged as leaving it.
_RANGE_SLACK = 0.01


@dataclass
class PredictGuards:
    """Optional bounds on the predicted weights."""

    floor: Dict[str, float] = field(default_factory=dict)
    """Minimum weight per domain ("*" applies to every domain not named)."""
    max_change_per_doubling: Optional[float] = None
    """Factor >= 1: per doubling of total budget past the largest proxy budget, a weight may
    grow or shrink by at most this factor (e.g. 1.5)."""
    ceiling: Dict[str, float] = field(default_factory=dict)
    """Maximum weight per domain ("*" for every domain not named), e.g. the share of the
    target a domain can fill without repeating its data (the pipeline's ``max_epochs``)."""
    hold_unmeasured: bool = True
    """Hold a domain at its weight of the largest proxy budget when DDO kept it at its base
    quantity at some budget (flat or failed response): its trend is not a measured one, and
    extrapolating it is how a noisy proxy turns into a wild prediction."""

    def __post_init__(self):
        problems = [f"floor of {d!r} must be in [0, 1), got {w!r}"
                    for d, w in self.floor.items() if not (0 <= w < 1)]
        problems += [f"ceiling of {d!r} must be in (0, 1], got {w!r}"
                     for d, w in self.ceiling.items() if not (0 < w <= 1)]
        cap = self.max_change_per_doubling
        if cap is not None and not (cap >= 1 and math.isfinite(cap)):
            problems.append(f"max change per doubling must be a factor >= 1, got {cap!r}")
        if problems:
            raise InputError("invalid guards: " + "; ".join(problems))

    def floor_of(self, domain: str) -> float:
        return self.floor.get(domain, self.floor.get("*", 0.0))

    def ceiling_of(self, domain: str) -> float:
        return self.ceiling.get(domain, self.ceiling.get("*", 1.0))


@dataclass
class LogLinearModel:
    """``log N_i(s) = intercept_i + slope_i * s``, with one coordinate per input budget."""

    domains: List[str]
    intercept: np.ndarray
    slope: np.ndarray
    coordinates: np.ndarray
    """s of each input budget (0 and 1 for the two smallest)."""
    rms_log_residual: float
    domain_rms_log_residual: np.ndarray

    def tokens_at(self, s: float) -> np.ndarray:
        # Past float range is inf: "too many" for the search for s; predict() refuses it.
        with np.errstate(over="ignore"):
            return np.exp(self.intercept + self.slope * s)


@dataclass
class DomainReport:
    proxy_weights: List[float]
    raw_weight: float
    """Weight the log-linear model predicts before guards."""
    weight: float
    observed_change_per_doubling: float
    """Weight factor per doubling of budget between the two largest proxy budgets."""
    predicted_change_per_doubling: float
    """Weight factor per doubling from the largest proxy budget to the target."""
    leaves_proxy_range: bool
    guard: Optional[str]
    trend_within_noise: Optional[bool]
    """True when the move between the two largest proxy budgets lies inside their
    sensitivity intervals (only known when both mixtures carry one)."""
    kept_at_base_at: List[float] = field(default_factory=list)
    """Proxy budgets whose DDO left this domain at its base quantity (flat response or failed
    runs): there its weight is not a measured optimum, so the trend through it is not either."""
    trend_per_doubling: Optional[float] = None
    """Weight factor per doubling of budget, fitted over all proxy budgets (weighted by the
    noise of each budget's weight when known)."""
    trend_noise: Optional[float] = None
    """Std of that trend's log (per doubling), from the mixtures' noise; None when unknown."""
    trend_log_residual: Optional[float] = None
    """RMS residual of the log weight about the trend (three or more budgets)."""
    shrinkage: Optional[float] = None
    """Share of the extrapolated change that is kept (1: the paper's rule; 0: the largest
    budget's weight); None when the noise is unknown or the prediction is plain."""
    shrunk_weight: Optional[float] = None
    """Weight after the shrinkage and before guards."""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Prediction:
    s: float
    total_tokens: float
    """The target as given (an int stays exact), or the trend's total for ``steps``."""
    tokens: Dict[str, float]
    weights: Dict[str, float]
    model: LogLinearModel
    budgets: List[float]
    report: Dict[str, DomainReport]
    shrinkage: Optional[Shrinkage] = None
    """The noise-aware step (None for a plain prediction)."""


def fit_log_linear(mixtures: Sequence[Mixture]) -> LogLinearModel:
    """Fit the shared-coordinate log-linear model to mixtures sorted by total budget."""
    domains = list(mixtures[0].tokens)
    log_tokens = np.log(np.array([[m.tokens[d] for d in domains] for m in mixtures])).T
    if len(mixtures) == 2:
        intercept, slope = log_tokens[:, 0], log_tokens[:, 1] - log_tokens[:, 0]
        coordinates = np.array([0.0, 1.0])
    else:
        intercept, slope, coordinates = _alternating_least_squares(log_tokens, mixtures)
    residual = log_tokens - (intercept[:, None] + slope[:, None] * coordinates[None, :])
    per_domain = np.sqrt(np.mean(residual**2, axis=1))
    return LogLinearModel(domains, intercept, slope, coordinates,
                          float(np.sqrt(np.mean(residual**2))), per_domain)


def _alternating_least_squares(log_tokens: np.ndarray, mixtures):
    """Bilinear least squares: a few alternating passes for a start, then Levenberg-Marquardt."""
    # Start each extra budget's coordinate from where its total sits between the first two.
    totals = np.log([m.total_tokens for m in mixtures])
    coordinates = (totals - totals[0]) / (totals[1] - totals[0])
    coordinates[:2] = (0.0, 1.0)
    for _ in range(_ALS_ITERATIONS):
        intercept, slope = _regress_per_domain(log_tokens, coordinates)
        if not np.any(slope):
            return intercept, slope, coordinates
        coordinates[2:] = (slope @ (log_tokens[:, 2:] - intercept[:, None])) / (slope @ slope)
    num_domains = log_tokens.shape[0]

    def residuals(params):
        t = np.concatenate([[0.0, 1.0], params[2 * num_domains:]])
        fitted = params[:num_domains, None] + params[num_domains:2 * num_domains, None] * t[None, :]
        return (fitted - log_tokens).ravel()

    start = np.concatenate([intercept, slope, coordinates[2:]])
    params = least_squares(residuals, start, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    coordinates = np.concatenate([[0.0, 1.0], params[2 * num_domains:]])
    return params[:num_domains], params[num_domains:2 * num_domains], coordinates


def _regress_per_domain(log_tokens: np.ndarray, coordinates: np.ndarray):
    design = np.stack([np.ones_like(coordinates), coordinates], axis=1)
    coef, *_ = np.linalg.lstsq(design, log_tokens.T, rcond=None)
    return coef[0], coef[1]


def predict(mixtures: Sequence[Mixture], target_tokens: Optional[float] = None,
            steps: Optional[float] = None, guards: Optional[PredictGuards] = None,
            noise_aware: bool = True) -> Prediction:
    """Predict the mixture at ``target_tokens`` total, or ``steps`` units of s past the last.

    ``noise_aware`` shrinks each domain's extrapolated change toward the largest budget's
    weight by the signal-to-noise ratio of its trend (:func:`shrink_extrapolation`); where
    the mixtures carry no noise it changes nothing, and the prediction is the paper's rule.
    """
    ordered = _check_inputs(mixtures, target_tokens, steps)
    _warn_on_eval_sets(ordered)
    model = fit_log_linear(ordered)
    if model.rms_log_residual > 0.05:
        logger.warning("budgets disagree with one log-linear trend (RMS log residual %.3f)",
                       model.rms_log_residual)
    last = float(model.coordinates[-1])
    s = last + steps if steps is not None else _solve_for_s(model, target_tokens, last)
    raw_tokens = model.tokens_at(s)
    if not np.all(np.isfinite(raw_tokens)):
        raise InputError(f"the trend at s = {s:.4g} exceeds floating-point range; "
                         "predict a smaller budget")
    # An int target stays exact (the mixture's whole tokens must sum to it); math uses floats.
    exact_total = target_tokens if target_tokens is not None else float(raw_tokens.sum())
    total = float(exact_total)
    raw_weights = raw_tokens / raw_tokens.sum()
    budgets = [m.total_tokens for m in ordered]
    trends = weight_trends(ordered)
    shrinkage = shrink_toward_zero(trends.slope.tolist(), trends.variance) if noise_aware else None
    shrunk = shrink_extrapolation(raw_weights, ordered[-1], shrinkage)
    guards = guards or PredictGuards()
    held = [d for d in model.domains if guards.hold_unmeasured and _kept_at_base(d, ordered)]
    weights, applied = _apply_guards(model.domains, shrunk, ordered[-1], budgets[-1], total,
                                     guards, held)
    report = _report(model.domains, ordered, raw_weights, weights, total, applied)
    _add_trends(report, trends, shrinkage, shrunk)
    tokens = {d: float(w * total) for d, w in zip(model.domains, weights)}
    return Prediction(s, exact_total, tokens, dict(zip(model.domains, map(float, weights))), model,
                      budgets, report, shrinkage)


def _add_trends(report: Dict[str, DomainReport], trends: TrendEstimate,
                shrinkage: Optional[Shrinkage], shrunk: np.ndarray) -> None:
    for i, domain in enumerate(trends.domains):
        entry = report[domain]
        entry.trend_per_doubling = float(math.exp(trends.slope[i]))
        variance = trends.variance[i]
        entry.trend_noise = None if variance is None else float(math.sqrt(variance))
        entry.trend_log_residual = (float(trends.rms_log_residual[i])
                                    if len(entry.proxy_weights) > 2 else None)
        if shrinkage is not None and variance is not None:
            entry.shrinkage = float(shrinkage.factors[i])
        entry.shrunk_weight = float(shrunk[i])


def _check_inputs(mixtures, target_tokens, steps) -> List[Mixture]:
    if len(mixtures) < 2:
        raise InputError(f"prediction needs DDO mixtures at two or more budgets, got {len(mixtures)}")
    if (target_tokens is None) == (steps is None):
        raise InputError("give exactly one of a target total (--target-tokens) or --steps")
    ordered = sorted(mixtures, key=lambda m: m.total_tokens)
    domains = set(ordered[0].tokens)
    for m in ordered[1:]:
        if set(m.tokens) != domains:
            raise InputError(f"mixtures name different domains: {sorted(domains)} vs {sorted(m.tokens)}")
    for a, b in zip(ordered, ordered[1:]):
        if a.total_tokens == b.total_tokens:
            raise InputError(f"two mixtures have the same budget ({a.total_tokens:,.0f} tokens)")
    for m in ordered:
        zero = [d for d, n in m.tokens.items() if n <= 0]
        if zero:
            raise InputError(f"mixture at {m.total_tokens:,.0f} tokens gives domain {zero[0]!r} no "
                             "tokens; a zero quantity cannot be extrapolated in log space")
    if target_tokens is not None and not (target_tokens > 0 and _finite(target_tokens)):
        raise InputError(f"target tokens must be a positive number, got {target_tokens!r}")
    if steps is not None and not (steps >= 0 and math.isfinite(steps)):
        raise InputError(f"steps must be a non-negative number, got {steps!r}")
    return ordered


def _finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range
        return False


def _warn_on_eval_sets(ordered: Sequence[Mixture]) -> None:
    """Budgets may share one eval set; optima measured on different ones compare less well."""
    budgets_by_eval_set: Dict[str, List[str]] = {}
    for mixture in ordered:
        label = _eval_set_label(mixture)
        budgets_by_eval_set.setdefault(label, []).append(human_tokens(mixture.total_tokens))
    if len(budgets_by_eval_set) > 1:
        summary = "; ".join(f"{', '.join(budgets)} on {label}"
                            for label, budgets in budgets_by_eval_set.items())
        logger.warning("the DDO mixtures were measured on different eval sets (%s): their optima "
                       "are less comparable across budgets; rerun the proxies on one eval set",
                       summary)


def _eval_set_label(mixture: Mixture) -> str:
    record = mixture.provenance.get("eval_set")
    if isinstance(record, dict) and record.get("mixed"):
        return "mixed eval sets"
    fingerprint = record.get("fingerprint") if isinstance(record, dict) else None
    return short_fingerprint(fingerprint if isinstance(fingerprint, str) and fingerprint else None)


def _solve_for_s(model: LogLinearModel, target: float, last: float) -> float:
    # The total is a sum of exponentials in s: convex, so it has a single increasing branch.
    def excess(s):
        return float(model.tokens_at(s).sum()) - target

    def slope_at(s):
        return float(model.slope @ model.tokens_at(s))

    start = float(model.coordinates[0])
    if slope_at(start) < 0:
        start = brentq(slope_at, start, last) if slope_at(last) > 0 else last
    if abs(excess(start)) <= 1e-12 * target:
        return start
    if excess(start) > 0:
        smallest = float(model.tokens_at(start).sum())
        raise InputError(f"target of {target:,.0f} tokens is below what the trend reaches "
                         f"({smallest:,.0f}); use a DDO result at that budget directly")
    high = max(last, start) + 1.0
    while excess(high) < 0:
        if high > 1e6:
            raise InputError(f"target of {target:,.0f} tokens is not reachable: the domain "
                             "quantities do not grow with the budget")
        high = start + 2.0 * (high - start)
    return brentq(excess, start, high, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=500)


def _apply_guards(domains, raw_weights, last_mixture, last_total, total, guards: PredictGuards,
                  held: Sequence[str] = ()):
    lower = np.array([guards.floor_of(d) for d in domains])
    ceiling = np.array([guards.ceiling_of(d) for d in domains])
    upper = ceiling.copy()
    last = np.array([last_mixture.weights[d] for d in domains])
    if guards.max_change_per_doubling is not None and total > last_total:
        factor = guards.max_change_per_doubling ** math.log2(total / last_total)
        lower = np.maximum(lower, last / factor)
        upper = np.minimum(upper, last * factor)
    is_held = np.array([d in held for d in domains])
    lower = np.where(is_held, np.maximum(last, lower), lower)
    upper = np.where(is_held, np.maximum(last, lower), upper)
    weights = project_capped_simplex(raw_weights, lower, upper)
    applied = []
    for i in range(len(domains)):
        if is_held[i]:
            applied.append("held (no measured trend)")
        elif weights[i] <= lower[i] * (1 + 1e-12) and raw_weights[i] < lower[i]:
            applied.append("floor" if lower[i] == guards.floor_of(domains[i]) else "change cap")
        elif weights[i] >= upper[i] * (1 - 1e-12) and raw_weights[i] > upper[i]:
            applied.append("ceiling" if upper[i] == ceiling[i] else "change cap")
        else:
            applied.append(None)
    return weights, applied


def project_capped_simplex(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Weights ``clip(mu * w, lower, upper)`` summing to 1: rescales the unconstrained
    domains together, so their ratios are kept."""
    if lower.sum() > 1 + 1e-12 or upper.sum() < 1 - 1e-12:
        raise InfeasibleError(f"guards cannot be met together: floors sum to {lower.sum():.4f} "
                              f"and caps to {upper.sum():.4f}, but weights must sum to 1")

    def excess(log_mu):
        return float(np.clip(np.exp(log_mu) * weights, lower, upper).sum()) - 1.0

    low, high = -1.0, 1.0
    while excess(low) > 0:
        low *= 2
    while excess(high) < 0:
        high *= 2
    log_mu = brentq(excess, low, high, xtol=1e-15, maxiter=500)
    projected = np.clip(np.exp(log_mu) * weights, lower, upper)
    return projected / projected.sum()


def _report(domains, ordered, raw_weights, weights, total, applied) -> Dict[str, DomainReport]:
    previous, last = ordered[-2], ordered[-1]
    proxy_doublings = math.log2(last.total_tokens / previous.total_tokens)
    target_doublings = math.log2(total / last.total_tokens) if total != last.total_tokens else 0.0
    report = {}
    for i, domain in enumerate(domains):
        history = [m.weights[domain] for m in ordered]
        observed = (history[-1] / history[-2]) ** (1.0 / proxy_doublings)
        predicted = (weights[i] / history[-1]) ** (1.0 / target_doublings) if target_doublings else 1.0
        leaves = not (min(history) * (1 - _RANGE_SLACK) <= raw_weights[i] <= max(history) * (1 + _RANGE_SLACK))
        report[domain] = DomainReport(
            [float(w) for w in history], float(raw_weights[i]), float(weights[i]), float(observed),
            float(predicted), bool(leaves), applied[i], _within_noise(domain, previous, last),
            _kept_at_base(domain, ordered),
        )
        if report[domain].kept_at_base_at:
            logger.warning("domain %r: DDO kept it at its base quantity at %s tokens (flat or failed "
                           "response): its trend is not measured%s",
                           domain, ", ".join(f"{b:,.0f}" for b in report[domain].kept_at_base_at),
                           "; held at its weight of the largest budget" if applied[i] else "")
        if leaves:
            logger.warning("domain %r: predicted weight %.4f leaves the range seen at the proxy "
                           "budgets [%.4f, %.4f]", domain, raw_weights[i], min(history), max(history))
    return report


def _kept_at_base(domain: str, mixtures: Sequence[Mixture]) -> List[float]:
    kept = []
    for mixture in mixtures:
        provenance = mixture.provenance
        fit = provenance.get("fits", {}).get(domain, {})
        if domain in provenance.get("pinned", {}) or (isinstance(fit, dict) and fit.get("flat")):
            kept.append(float(mixture.total_tokens))
    return kept


def _within_noise(domain: str, previous: Mixture, last: Mixture) -> Optional[bool]:
    intervals = []
    for mixture in (previous, last):
        entry = mixture.provenance.get("sensitivity", {}).get("weights", {}).get(domain)
        if not isinstance(entry, dict) or not {"lo", "hi"} <= set(entry):
            return None
        intervals.append(entry)
    # Overlapping intervals: the move between the budgets is not resolved by the data.
    return bool(intervals[0]["lo"] <= intervals[1]["hi"] and intervals[1]["lo"] <= intervals[0]["hi"])


def prediction_to_mixture(prediction: Prediction, inputs: List[dict], guards: PredictGuards) -> Mixture:
    """The predicted mixture as an ``autoscale.mixture/v1`` record (whole tokens)."""
    from .ddo import integer_tokens

    domains = list(prediction.weights)
    exact_total = prediction.total_tokens
    if not (isinstance(exact_total, int) or float(exact_total).is_integer()):
        exact_total = None  # a --steps prediction: its (rounded) sum
    rounded = integer_tokens([prediction.tokens[d] for d in domains], exact_total)
    provenance = {
        "inputs": inputs, "budgets": prediction.budgets, "s": prediction.s,
        "coordinates": prediction.model.coordinates.tolist(),
        "rms_log_residual": prediction.model.rms_log_residual,
        "guards": {"floor": guards.floor, "max_change_per_doubling": guards.max_change_per_doubling,
                   "hold_unmeasured": guards.hold_unmeasured, "ceiling": guards.ceiling},
        "report": {d: r.to_dict() for d, r in prediction.report.items()},
        "noise_aware": _noise_aware_record(prediction),
    }
    return Mixture(int(sum(rounded)), dict(prediction.weights), dict(zip(domains, rounded)),
                   "autoscale", provenance)


def _noise_aware_record(prediction: Prediction) -> dict:
    shrinkage = prediction.shrinkage
    if shrinkage is None:
        return {"applied": False, "reason": "plain prediction (the paper's rule)"}
    if shrinkage.prior_variance is None:
        return {"applied": False, "reason": "the mixtures carry no noise: the paper's rule"}
    domains = list(prediction.report)
    return {"applied": True, "estimator": ESTIMATOR, "shrunk_toward": "largest budget's weight",
            "prior_std_per_doubling": shrinkage.prior_std,
            "factors": {d: prediction.report[d].shrinkage for d in domains},
            "unshrunk_weights": {d: prediction.report[d].raw_weight for d in domains}}
