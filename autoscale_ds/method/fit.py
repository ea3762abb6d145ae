"""Per-domain power-law response fit used by DDO.

DDO perturbs one domain's token count by a ratio ``x`` (the base run is ``x = 1``) and
records the run's objective relative to the base run, ``y``. The response is modelled as

    y(x) = (x + a)^(-b) + c,   a >= 0, b > 0

(AutoScale, Kang et al. 2025, Sec. 3). Three points fix the three parameters; more points
are fitted by least squares. ``c`` enters linearly, so for any ``(a, b)`` its best value is
the mean residual: we search only over ``(a, b)`` (variable projection), from several
starting points, which makes the fit both fast and free of bad local minima.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np
from scipy.optimize import least_squares

logger = logging.getLogger(__name__)

# A fit whose RMS residual is below this (in units of relative objective) is "exact".
EXACT_RMS_TOLERANCE = 1e-7
# Upper end of the offset search; a ~1e4 offset already makes the curve locally linear.
MAX_OFFSET_A = 1e4
MIN_EXPONENT_B = 1e-9
MAX_EXPONENT_B = 1e4


@dataclass(frozen=True)
class ResponseFit:
    """Fitted response ``y(x) = (x + a)^(-b) + c`` of one domain, with diagnostics."""

    domain: str
    a: float
    """Offset >= 0: data of this kind the model effectively gets from other domains."""
    b: float
    """Exponent > 0: how fast the loss falls with more of this domain; 0 for a flat fit."""
    c: float
    """Constant: the part of the objective this domain's data cannot reduce."""
    num_points: int
    rms_residual: float
    exact: bool
    """True when the curve passes through every point (3 points, fit succeeded)."""
    flat: bool = False
    """True when the points show no decreasing convex response: the domain is not moved."""
    reason: str = ""
    x: List[float] = field(default_factory=list)
    y: List[float] = field(default_factory=list)
    alternatives: List[List[float]] = field(default_factory=list)
    """Other ``[a, b]`` that fit equally well (three points often admit two exact curves)."""

    def predict(self, x) -> np.ndarray:
        """Model value at ratio(s) ``x``."""
        x = np.asarray(x, dtype=float)
        return np.power(x + self.a, -self.b) + self.c

    def to_dict(self) -> dict:
        return {
            "a": self.a, "b": self.b, "c": self.c, "num_points": self.num_points,
            "rms_residual": self.rms_residual if math.isfinite(self.rms_residual) else None,
            "exact": self.exact, "flat": self.flat,
            "reason": self.reason, "x": list(self.x), "y": list(self.y),
            "alternatives": [list(pair) for pair in self.alternatives],
        }


def fit_response(domain: str, x: Sequence[float], y: Sequence[float], warn: bool = True) -> ResponseFit:
    """Fit the power law to points ``(x_k, y_k)``; return a flat fit when it cannot apply.

    ``x`` are token ratios relative to the base run (> 0), ``y`` objectives relative to it.
    At least three distinct ``x`` are required (the caller validates runs files).
    ``warn=False`` silences the flat-fit warning (used by the noise simulation).
    """
    x_arr, y_arr = _sorted_points(x, y)
    reason = _shape_problem(x_arr, y_arr)
    if reason:
        if warn:
            logger.warning("domain %r: %s; using a flat fit (its quantity is not moved)", domain, reason)
        return _flat_fit(domain, x_arr, y_arr, reason)
    a, b, c, rms, alternatives = _best_power_law(x_arr, y_arr)
    exact = rms < EXACT_RMS_TOLERANCE and len(np.unique(x_arr)) == 3
    return ResponseFit(
        domain, a, b, c, len(x_arr), rms, exact, x=x_arr.tolist(), y=y_arr.tolist(),
        alternatives=[list(pair) for pair in alternatives],
    )


def _sorted_points(x: Sequence[float], y: Sequence[float]):
    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    order = np.argsort(x_arr, kind="stable")
    return x_arr[order], y_arr[order]


def _shape_problem(x: np.ndarray, y: np.ndarray) -> str:
    """Why these points cannot be a decreasing convex response; "" if they can."""
    ux, uy = _mean_per_x(x, y)
    if len(ux) < 3:
        return f"only {len(ux)} distinct token ratios (need 3)"
    slopes = np.diff(uy) / np.diff(ux)
    if np.any(slopes >= 0):
        return "objective does not decrease as the domain grows"
    # Convexity: the secant slopes must increase (become less negative) from left to right.
    if np.any(np.diff(slopes) <= 0):
        return "objective falls faster with more data (not convex)"
    return ""


def _mean_per_x(x: np.ndarray, y: np.ndarray):
    ux, inverse = np.unique(x, return_inverse=True)
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return ux, uy


def _flat_fit(domain: str, x: np.ndarray, y: np.ndarray, reason: str) -> ResponseFit:
    c = float(np.mean(y)) - 1.0  # (x + 0)^0 == 1
    rms = float(np.sqrt(np.mean((y - 1.0 - c) ** 2)))
    return ResponseFit(domain, 0.0, 0.0, c, len(x), rms, False, True, reason, x.tolist(), y.tolist())


def _projected_residuals(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, b = params
    residual = y - np.power(x + a, -b)
    return residual - residual.mean()  # subtracting the mean is choosing the optimal c


def _profile(x: np.ndarray, y: np.ndarray):
    """For each grid offset ``a``: the best exponent ``b`` and its cost.

    Following the valley floor (best ``b`` per ``a``) avoids the narrow diagonal valley of
    the joint (a, b) surface in which local optimisers stall. The best grid ``b`` is then
    polished by a golden-section search between its grid neighbours, for all ``a`` at once.
    """
    costs = _costs(x, y, _GRID_A[:, None], _GRID_B[None, :])
    best_j = np.argmin(costs, axis=1)
    lo = np.log(_GRID_B[np.maximum(best_j - 1, 0)])
    hi = np.log(_GRID_B[np.minimum(best_j + 1, len(_GRID_B) - 1)])
    for _ in range(_GOLDEN_ITERATIONS):
        left = hi - _GOLDEN * (hi - lo)
        right = lo + _GOLDEN * (hi - lo)
        left_better = _costs(x, y, _GRID_A, np.exp(left)) < _costs(x, y, _GRID_A, np.exp(right))
        hi = np.where(left_better, right, hi)
        lo = np.where(left_better, lo, left)
    best_b = np.exp(0.5 * (lo + hi))
    return best_b, _costs(x, y, _GRID_A, best_b)


def _costs(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Projected sum of squares for broadcastable arrays of ``a`` and ``b``."""
    with np.errstate(over="ignore", invalid="ignore"):
        curves = np.power(x + np.asarray(a)[..., None], -np.asarray(b)[..., None])
        residual = y - curves
        residual -= residual.mean(axis=-1, keepdims=True)
        costs = np.sum(residual * residual, axis=-1)
    costs[~np.isfinite(costs)] = np.inf  # a tiny base with a huge exponent overflows
    return costs


def _amplitude_roots(x: np.ndarray, y: np.ndarray):
    """Starting points ``(a, b)`` on the valley floor, found through a free amplitude.

    With an amplitude ``A`` free, ``y = A (x + a)^(-b) + c`` has a smooth, well-posed best
    ``b`` for every ``a`` (``A`` and ``c`` are linear). Our model is the case ``A = 1``, so
    the offsets where the best free amplitude crosses 1 sit in the exact-fit valley, which
    is too narrow to find by gridding (a, b) directly.
    """
    shape_cost, amplitude = _shape_fit(x, y, _GRID_A[:, None], _GRID_B[None, :])
    best_j = np.argmin(shape_cost, axis=1)
    lo = np.log(_GRID_B[np.maximum(best_j - 1, 0)])
    hi = np.log(_GRID_B[np.minimum(best_j + 1, len(_GRID_B) - 1)])
    for _ in range(_GOLDEN_ITERATIONS):
        left = hi - _GOLDEN * (hi - lo)
        right = lo + _GOLDEN * (hi - lo)
        left_cost, _ = _shape_fit(x, y, _GRID_A, np.exp(left))
        right_cost, _ = _shape_fit(x, y, _GRID_A, np.exp(right))
        left_better = left_cost < right_cost
        hi = np.where(left_better, right, hi)
        lo = np.where(left_better, lo, left)
    best_b = np.exp(0.5 * (lo + hi))
    _, best_amplitude = _shape_fit(x, y, _GRID_A, best_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_amplitude = np.where(best_amplitude > 0, np.log(best_amplitude), np.nan)
    return _interpolated_crossings(log_amplitude, best_b)


def _shape_fit(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Residual sum of squares and amplitude of the free-amplitude fit, broadcast."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        shape = np.power(x + np.asarray(a)[..., None], -np.asarray(b)[..., None])
        shape_centered = shape - shape.mean(axis=-1, keepdims=True)
        y_centered = y - y.mean()
        variance = np.sum(shape_centered * shape_centered, axis=-1)
        covariance = np.sum(shape_centered * y_centered, axis=-1)
        amplitude = covariance / variance
        cost = np.sum(y_centered * y_centered) - covariance * amplitude
    bad = ~np.isfinite(cost) | ~np.isfinite(amplitude)
    cost = np.where(bad, np.inf, cost)
    return cost, np.where(bad, np.nan, amplitude)


def _interpolated_crossings(log_amplitude: np.ndarray, best_b: np.ndarray):
    """(a, b) where ``log_amplitude`` changes sign between neighbouring grid offsets."""
    starts = []
    for i in range(len(_GRID_A) - 1):
        h0, h1 = log_amplitude[i], log_amplitude[i + 1]
        if np.isfinite(h0) and np.isfinite(h1) and (h0 == 0 or h0 * h1 < 0):
            t = h0 / (h0 - h1) if h0 != h1 else 0.0
            a = _GRID_A[i] + t * (_GRID_A[i + 1] - _GRID_A[i])
            b = math.exp((1 - t) * math.log(best_b[i]) + t * math.log(best_b[i + 1]))
            starts.append((float(a), float(b)))
    return starts


def _profile_minima(profile_cost: np.ndarray, max_starts: int = 4):
    """Indices of local minima of the 1-D profile, best first."""
    padded = np.concatenate([[np.inf], profile_cost, [np.inf]])
    is_min = (profile_cost <= padded[:-2]) & (profile_cost <= padded[2:])
    indices = np.flatnonzero(is_min)
    return indices[np.argsort(profile_cost[indices], kind="stable")][:max_starts]


def _refine(x: np.ndarray, y: np.ndarray, a0: float, b0: float):
    # a = u^2 and b = v^2 keep the bounds without a bounded solver: Levenberg-Marquardt
    # then walks the curved valley far better than a trust-region-reflective step.
    def residuals(uv):
        with np.errstate(over="ignore", invalid="ignore"):
            value = _projected_residuals((uv[0] ** 2, uv[1] ** 2), x, y)
        return np.nan_to_num(value, nan=1e150, posinf=1e150, neginf=-1e150)

    result = least_squares(
        residuals, x0=[math.sqrt(a0) + 1e-6, math.sqrt(b0)], method="lm",
        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=4000,
    )
    a = min(float(result.x[0]) ** 2, MAX_OFFSET_A)
    b = min(max(float(result.x[1]) ** 2, MIN_EXPONENT_B), MAX_EXPONENT_B)
    with np.errstate(over="ignore", invalid="ignore"):
        cost = float(np.sum(_projected_residuals((a, b), x, y) ** 2))
    return a, b, (cost if math.isfinite(cost) else math.inf)


def _best_power_law(x: np.ndarray, y: np.ndarray):
    """Global least-squares fit: grid search for basins, then local refinement of each.

    Three points usually admit TWO exact curves (the offset ``a`` trades against the
    exponent ``b``); they agree closely between the tried ratios. We keep the one with the
    larger offset so the choice is deterministic, and list the others as alternatives.
    """
    best_b, profile_cost = _profile(x, y)
    starts = [(_GRID_A[i], best_b[i]) for i in _profile_minima(profile_cost)]
    starts += _amplitude_roots(x, y)
    candidates = [_refine(x, y, a0, b0) for a0, b0 in starts]
    candidates = [cand for cand in candidates if math.isfinite(cand[2])] or [(1.0, 1.0, math.inf)]
    best_cost = min(cost for _, _, cost in candidates)
    tie_tolerance = max(best_cost, 1e-30) * 10.0 + len(x) * EXACT_RMS_TOLERANCE**2
    tied = [cand for cand in candidates if cand[2] <= tie_tolerance]
    a, b, cost = max(tied, key=lambda cand: cand[0])
    alternatives = _distinct_alternatives(tied, chosen=(a, b))
    c = float(np.mean(y - np.power(x + a, -b)))
    return a, b, c, math.sqrt(cost / len(x)), alternatives


def _distinct_alternatives(tied, chosen):
    alternatives = []
    for a, b, _ in tied:
        known = [chosen] + alternatives
        if all(abs(a - ka) > 1e-6 * (1 + ka) or abs(b - kb) > 1e-6 * (1 + kb) for ka, kb in known):
            alternatives.append((a, b))
    return alternatives


_GRID_A = np.concatenate([[0.0], np.logspace(-3, 4, 141)])
_GRID_B = np.logspace(-4, 3, 141)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_GOLDEN_ITERATIONS = 40
