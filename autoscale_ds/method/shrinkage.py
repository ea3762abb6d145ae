"""Empirical-Bayes shrinkage of noisy moves toward "no move".

Small proxies measure each domain's move (DDO's change of a weight away from the base
mixture, or a weight's trend across budgets) with noise of known variance ``v_i``. Acting on
the raw estimate ``m_i`` extrapolates the noise along with the signal. We use the standard
normal-means model (Efron & Morris 1973; Efron, "Large-Scale Inference", 2010, ch. 1):

    m_i | mu_i ~ N(mu_i, v_i),     mu_i ~ N(0, tau^2)    (zero-centred prior: no move)

whose posterior mean is ``k_i * m_i`` with the shrinkage factor ``k_i = tau^2 / (tau^2 + v_i)``.
The prior scale is estimated across domains by the method of moments,
``tau^2 = max(0, mean_i(m_i^2 - v_i))``: moves no larger than their noise give ``tau^2 = 0``
and are not acted on; moves far above their noise keep ``k_i`` near 1. With no noise
(``v_i = 0``) the factor is exactly 1, so the plain method is the zero-noise limit. Domains
whose variance is unknown (``None`` or NaN) are not shrunk and do not inform ``tau^2``.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

ESTIMATOR = ("empirical Bayes: posterior mean under a zero-centred normal prior whose variance "
             "is the method-of-moments estimate max(0, mean(m^2 - v)) across domains")


@dataclass(frozen=True)
class Shrinkage:
    estimates: List[float]
    variances: List[Optional[float]]
    prior_variance: Optional[float]
    """tau^2; None when no domain has a known variance."""
    factors: List[float]
    """k_i in [0, 1]: the share of each estimate kept (1: not shrunk)."""

    @property
    def shrunk(self) -> List[float]:
        return [k * m for k, m in zip(self.factors, self.estimates)]

    @property
    def prior_std(self) -> Optional[float]:
        return None if self.prior_variance is None else math.sqrt(self.prior_variance)


def shrink_toward_zero(estimates: Sequence[float], variances: Sequence[Optional[float]]) -> Shrinkage:
    """Posterior-mean shrinkage of each estimate toward 0 (see the module docstring)."""
    if len(estimates) != len(variances):
        raise ValueError(f"{len(estimates)} estimates but {len(variances)} variances")
    known = [_known(v) for v in variances]
    if any(v is not None and v < 0 for v in known):
        raise ValueError(f"variances must be >= 0, got {list(variances)}")
    pairs = [(m, v) for m, v in zip(estimates, known) if v is not None]
    if not pairs:
        return Shrinkage(list(estimates), list(known), None, [1.0] * len(estimates))
    prior = max(0.0, math.fsum(m * m - v for m, v in pairs) / len(pairs))
    return Shrinkage(list(estimates), list(known), prior, [_factor(prior, v) for v in known])


def _known(variance: Optional[float]) -> Optional[float]:
    if variance is None or not math.isfinite(variance):
        return None
    return float(variance)


def _factor(prior: float, variance: Optional[float]) -> float:
    if variance is None or variance == 0.0:
        return 1.0  # unknown or no noise: the estimate is taken as it is
    return prior / (prior + variance)
