"""The DDO optimisation: exact KKT solution of a separable convex problem.

    minimise    sum_i (x_i + a_i)^(-b_i)
    subject to  sum_i x_i * B_i = budget,   lo_i <= x_i <= hi_i

Each term is convex and decreasing, so at the optimum every free domain has the same
marginal loss reduction per token: ``b_i (x_i + a_i)^(-b_i - 1) = lam * B_i``. That gives
``x_i(lam)`` in closed form, clipped to its bounds; ``sum_i B_i x_i(lam)`` falls as ``lam``
grows, so one bisection over ``log lam`` finds the multiplier. No gradient steps.
Domains with ``b_i == 0`` (flat fits) have no marginal gain and are pinned by the caller.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InfeasibleError

_BISECTION_ITERATIONS = 200
# Budget match required of the bisection, relative to the budget.
_BUDGET_RELATIVE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Solution:
    """Optimal ratios and which bound (if any) binds for each domain."""

    ratios: np.ndarray
    """x_i: optimal quantity of domain i relative to its base quantity B_i."""
    active: List[Optional[str]]
    """"lower", "upper", "fixed" (lo == hi) or None (interior) per domain."""
    multiplier: float
    """lam: loss reduction per extra token at the optimum (shared by free domains)."""
    objective: float


def solve_ddo(
    a: Sequence[float], b: Sequence[float], base_tokens: Sequence[float],
    lower: Sequence[float], upper: Sequence[float], budget_tokens: Optional[float] = None,
) -> Solution:
    """Exact optimum of the DDO problem; ``budget_tokens`` defaults to ``sum(base_tokens)``."""
    a, b, base, lo, hi = (np.asarray(v, dtype=float) for v in (a, b, base_tokens, lower, upper))
    budget = float(np.sum(base)) if budget_tokens is None else float(budget_tokens)
    _check_feasible(base, lo, hi, budget)
    fixed = hi <= lo
    if np.any((b <= 0) & ~fixed):
        raise ValueError("domains with a flat fit (b <= 0) must be pinned: pass lower == upper")
    if np.all(fixed):
        return _solution(a, b, base, lo, hi, lo.copy(), math.nan)
    log_lam = _bisect_log_multiplier(a, b, base, lo, hi, fixed, budget)
    ratios = _ratios_at(log_lam, a, b, base, lo, hi, fixed)
    return _solution(a, b, base, lo, hi, _absorb_residual(ratios, base, lo, hi, budget),
                     math.exp(log_lam))


def _spent(base, lo, hi):
    return float(np.sum(base * lo)), float(np.sum(base * hi))


def _check_feasible(base, lo, hi, budget) -> None:
    if np.any(lo > hi):
        bad = int(np.argmax(lo > hi))
        raise InfeasibleError(f"domain #{bad}: lower bound {lo[bad]:g} exceeds upper bound {hi[bad]:g}")
    least, most = _spent(base, lo, hi)
    slack = _BUDGET_RELATIVE_TOLERANCE * max(budget, 1.0) * 10
    if budget < least - slack or budget > most + slack:
        raise InfeasibleError(
            f"budget of {budget:,.0f} tokens is outside what the bounds allow "
            f"[{least:,.0f}, {most:,.0f}]: widen the ratio bounds (--min-ratio/--max-ratio) "
            "or raise the token caps"
        )


def _ratios_at(log_lam, a, b, base, lo, hi, fixed) -> np.ndarray:
    # Stationarity: b (x + a)^(-b-1) = lam B  =>  x = (lam B / b)^(-1/(b+1)) - a.
    safe_b = np.where(fixed, 1.0, b)
    log_x_plus_a = -(log_lam + np.log(base) - np.log(safe_b)) / (safe_b + 1.0)
    with np.errstate(over="ignore"):
        free = np.exp(np.minimum(log_x_plus_a, 700.0)) - a
    return np.where(fixed, lo, np.clip(free, lo, hi))


def _bisect_log_multiplier(a, b, base, lo, hi, fixed, budget) -> float:
    def excess(log_lam):
        return float(np.sum(base * _ratios_at(log_lam, a, b, base, lo, hi, fixed))) - budget

    low, high = -50.0, 50.0
    while excess(low) < 0 and low > -1e4:
        low *= 2
    while excess(high) > 0 and high < 1e4:
        high *= 2
    for _ in range(_BISECTION_ITERATIONS):
        mid = 0.5 * (low + high)
        if excess(mid) > 0:
            low = mid
        else:
            high = mid
        if abs(excess(mid)) <= _BUDGET_RELATIVE_TOLERANCE * budget or high - low < 1e-15:
            break
    return 0.5 * (low + high)


def _absorb_residual(ratios, base, lo, hi, budget) -> np.ndarray:
    """Hand the last float-rounding residual of the budget to the interior domains.

    The bisection stops at the resolution of ``log lam``, which leaves ~1e-11 of the budget
    unspent; spreading it over domains away from their bounds makes the total exact.
    """
    interior = (ratios > lo) & (ratios < hi)
    if not np.any(interior):
        return ratios
    residual = budget - float(np.sum(base * ratios))
    share = base * ratios * interior
    adjusted = ratios + residual * share / share.sum() / base
    return np.where(interior, np.clip(adjusted, lo, hi), ratios)


def _solution(a, b, base, lo, hi, ratios, multiplier) -> Solution:
    active = []
    for i in range(len(ratios)):
        if hi[i] <= lo[i]:
            active.append("fixed")
        elif ratios[i] <= lo[i] * (1 + 1e-12):
            active.append("lower")
        elif ratios[i] >= hi[i] * (1 - 1e-12):
            active.append("upper")
        else:
            active.append(None)
    objective = float(np.sum(np.power(ratios + a, -b)))
    return Solution(ratios, active, multiplier, objective)
