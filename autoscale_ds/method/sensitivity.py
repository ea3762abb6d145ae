"""How far each DDO weight moves under noise in the measured objectives.

Small proxy runs are noisy: two seeds of the same mixture can differ by more than a
single-domain perturbation changes the loss (DESIGN.md, "Noise is the enemy of small
proxies"). We redo the whole fit + solve on objectives perturbed by multiplicative
Gaussian noise and report, per domain, the spread of the resulting weight. The noise level
is either given (relative sigma), or estimated from runs that share identical token counts
(e.g. the base run repeated with several seeds, or every run with ``replicate_perturbed``), or,
without repeats, from the residuals of responses measured at more than three ratios.
"""

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .ddo import (BASE, DDOOptions, Design, cross_seed_groups, pooled_relative_spread,
                  solve_design)
from .fit import fit_response
from ..errors import InputError

logger = logging.getLogger(__name__)

SKIPPED_OFF = "off"
"""``provenance.sensitivity.skipped``: the user asked for 0 draws."""
SKIPPED_NOISE_UNKNOWN = "noise unknown"
"""``provenance.sensitivity.skipped``: no repeated runs and no sigma given."""


@dataclass
class WeightInterval:
    weight: float
    """Weight at the measured objectives."""
    mean: float
    std: float
    lo: float
    hi: float
    base_weight: float
    """Weight of this domain in the base run: where DDO started from."""
    flat_fraction: float
    """Share of noisy draws in which this domain's fit came out flat."""
    log_noise: float = math.nan
    """RMS deviation of the draws' log weight from the measured weight's: the noise of a
    relative move, as the noise-aware DDO and predictor use it. About the measured weight,
    not the draws' mean: when noise makes most draws' fits flat (weights back at the base),
    the draws cluster away from the measured optimum, and that disagreement is noise too."""

    @property
    def move_within_noise(self) -> bool:
        """True when the base weight lies inside the interval: DDO's move is not resolved."""
        return self.lo <= self.base_weight <= self.hi

    def to_dict(self) -> dict:
        return {"weight": self.weight, "mean": self.mean, "std": self.std, "lo": self.lo,
                "hi": self.hi, "base_weight": self.base_weight,
                "flat_fraction": self.flat_fraction, "move_within_noise": self.move_within_noise,
                "log_noise": self.log_noise}


@dataclass
class SensitivityReport:
    relative_sigma: float
    sigma_source: str
    """"given" or "estimated from N replicate groups"."""
    draws: int
    coverage: float
    intervals: Dict[str, WeightInterval]

    def to_dict(self) -> dict:
        return {"relative_sigma": self.relative_sigma, "sigma_source": self.sigma_source,
                "draws": self.draws, "coverage": self.coverage,
                "weights": {d: iv.to_dict() for d, iv in self.intervals.items()}}


def estimate_relative_noise(design: Design) -> Optional[float]:
    """Pooled relative standard deviation of objectives among identical-token runs."""
    squares, dof = pooled_relative_spread(design.objectives, design.replicate_groups)
    return math.sqrt(squares / dof) if dof else None


def paired_noise(design: Design) -> Optional[Tuple[float, int]]:
    """(relative sigma, degrees of freedom) of a perturbation's measured effect, from
    perturbed runs repeated over seeds (``replicate_perturbed``), or None (also when pairing
    does not help, see :attr:`Design.use_pairing`: then every objective carries the noise).

    Each run is relative to the base run of its own seed (:meth:`Design.normalizers`), so
    the spread of these ratios across seeds at one token vector is the noise of what DDO
    fits — usually much less than the seed-to-seed spread of a single objective, which a
    shared seed cancels.
    """
    if not design.use_pairing:
        return None
    y = design.objectives / design.normalizers(design.objectives)
    squares, dof = pooled_relative_spread(y, cross_seed_groups(design))
    return (math.sqrt(squares / dof), dof) if dof else None


def residual_noise(design: Design) -> Optional[Tuple[float, int]]:
    """(relative sigma, degrees of freedom) from the least-squares residuals of responses
    measured at more than three ratios (e.g. ``ratios: [0.2, 0.5, 2, 3]``), or None.

    A response has three parameters, so a domain with ``n`` points leaves ``n - 3`` degrees
    of freedom; flat fits (no power law) are left out. Used when no run is repeated.
    """
    y = design.objectives / design.normalizers(design.objectives)
    squares, dof = 0.0, 0
    for index, domain in enumerate(design.domains):
        mask = (design.point_domain == index) | (design.point_domain == BASE)
        if len(np.unique(design.point_ratio[mask])) <= 3:
            continue
        fit = fit_response(domain, design.point_ratio[mask], y[mask], warn=False)
        if fit.flat:
            continue
        squares += fit.rms_residual ** 2 * fit.num_points
        dof += fit.num_points - 3
    return (math.sqrt(squares / dof), dof) if dof else None


def skip_reason(design: Design, relative_sigma: Optional[float], draws: int) -> Optional[str]:
    """Why no sensitivity report can be made (recorded in the mixture), or None if it can."""
    if draws <= 0:
        return SKIPPED_OFF
    if relative_sigma is None and estimate_relative_noise(design) is None \
            and residual_noise(design) is None:
        return SKIPPED_NOISE_UNKNOWN
    return None


def weight_intervals(
    design: Design, options: DDOOptions, relative_sigma: Optional[float] = None,
    draws: int = 200, seed: int = 0, coverage: float = 0.9,
    progress: Optional[Callable[[int], None]] = None,
) -> SensitivityReport:
    """Monte-Carlo interval of each weight; ``progress(1)`` is called after each draw."""
    sigma, source, on_effects = _resolve_sigma(design, relative_sigma)
    if draws < 2:
        raise InputError(f"sensitivity needs at least 2 draws, got {draws}")
    if not 0 < coverage < 1:
        raise InputError(f"coverage must be in (0, 1), got {coverage}")
    nominal = solve_design(design, options, warn=False)
    rng = np.random.default_rng(seed)
    samples = np.empty((draws, len(design.domains)))
    flat = np.zeros(len(design.domains))
    # Noise of an effect (paired or residual estimate) goes on the perturbed runs only: the
    # ratios DDO fits are relative to their base run, which carries none of it by definition.
    scale = sigma * ((design.point_domain != BASE) if on_effects else np.ones(len(design.objectives)))
    for k in range(draws):
        noisy = design.objectives * (1.0 + scale * rng.standard_normal(design.objectives.shape))
        result = solve_design(design, options, objectives=np.maximum(noisy, 1e-12), warn=False)
        tokens = result.optimal_tokens
        samples[k] = tokens / tokens.sum()
        flat += [fit.flat for fit in result.fits]
        if progress:
            progress(1)
    intervals = _summarise(design, nominal, samples, flat / draws, coverage)
    return SensitivityReport(sigma, source, draws, coverage, intervals)


def _resolve_sigma(design: Design, relative_sigma: Optional[float]):
    if relative_sigma is not None:
        if not (relative_sigma >= 0 and math.isfinite(relative_sigma)):
            raise InputError(f"noise sigma must be a non-negative number, got {relative_sigma!r}")
        return float(relative_sigma), "given", False
    paired = paired_noise(design)
    if paired is not None:
        return (paired[0], f"paired: perturbed runs repeated over seeds, each relative to its "
                f"seed's base run ({paired[1]} degrees of freedom)", True)
    estimate = estimate_relative_noise(design)
    if estimate is not None:
        groups = len(design.replicate_groups)
        return (estimate, f"estimated from {groups} group(s) of repeated runs (seed-to-seed "
                "spread of one objective: an upper bound when the runs share a seed)", False)
    residual = residual_noise(design)
    if residual is not None:
        return (residual[0], f"estimated from fit residuals ({residual[1]} degrees of freedom)",
                True)
    raise InputError("no noise level given and none can be estimated: the runs file has no "
                     "repeated runs (e.g. the base run with several seeds) and no domain was "
                     "perturbed at more than two ratios; pass --noise-sigma")


def _summarise(design, nominal, samples, flat_fraction, coverage) -> Dict[str, WeightInterval]:
    tail = (1.0 - coverage) / 2.0
    lo = np.quantile(samples, tail, axis=0)
    hi = np.quantile(samples, 1.0 - tail, axis=0)
    base_weights = design.base_tokens / design.base_tokens.sum()
    nominal_weights = nominal.weights
    measured = np.log([nominal_weights[d] for d in design.domains])
    deviation = np.log(np.maximum(samples, 1e-300)) - measured[None, :]
    log_noise = np.sqrt(np.mean(deviation**2, axis=0))
    return {
        domain: WeightInterval(
            weight=nominal_weights[domain], mean=float(samples[:, i].mean()),
            std=float(samples[:, i].std(ddof=1)), lo=float(lo[i]), hi=float(hi[i]),
            base_weight=float(base_weights[i]), flat_fraction=float(flat_fraction[i]),
            log_noise=float(log_noise[i]),
        )
        for i, domain in enumerate(design.domains)
    }
