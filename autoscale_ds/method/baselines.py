"""Baseline mixtures that need no proxy runs: natural, temperature and UniMax.

They are the yardsticks every learned mixture is compared with:

* **natural**: each domain in proportion to its tokens (what plain concatenation gives);
* **temperature**: ``w_i ∝ tokens_i^(1/τ)`` (Arivazhagan et al. 2019, "Massively Multilingual
  Neural Machine Translation in the Wild"). ``τ = 1`` is natural; a larger ``τ`` flattens the
  mixture and ``τ → ∞`` is uniform;
* **UniMax** (Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling for
  Large-Scale Multilingual Pretraining", Algorithm 1): as uniform as possible, but no domain
  is repeated more than ``max_epochs`` times over the training budget.

All three take ``{domain: tokens available}`` and return ``{domain: weight}`` (weights sum to 1,
in the input's domain order). Pure Python/numpy: no proxy runs, no training stack.
"""

import logging
import math
from typing import Dict, List, Mapping, Tuple

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)


def natural_weights(tokens_per_domain: Mapping[str, float]) -> Dict[str, float]:
    """Each domain's share of all tokens."""
    names, tokens = _token_vector(tokens_per_domain)
    return _as_weights(names, tokens / tokens.sum())


def temperature_weights(tokens_per_domain: Mapping[str, float], tau: float) -> Dict[str, float]:
    """Weights ∝ ``tokens^(1/tau)``; ``tau = math.inf`` gives the uniform mixture."""
    names, tokens = _token_vector(tokens_per_domain)
    if not _is_number(tau) or math.isnan(tau) or tau <= 0:
        raise InputError(f"temperature tau must be a number > 0 (1 = natural, larger = flatter), "
                         f"got {tau!r}")
    # In log space: tokens^(1/tau) overflows or underflows for small tau and large counts.
    logits = np.log(tokens) / tau
    shares = np.exp(logits - logits.max())
    return _as_weights(names, shares / shares.sum())


def unimax_weights(tokens_per_domain: Mapping[str, float], budget_tokens: float,
                   max_epochs: float) -> Dict[str, float]:
    """UniMax: a uniform split of the budget, each domain capped at ``max_epochs`` × its tokens.

    Domains are visited from the smallest to the largest. Each gets an equal share of the
    budget still unassigned, or its cap if that is smaller; what a capped domain cannot take
    stays in the budget and so is split over the larger domains that follow (Chung et al.
    2023, Algorithm 1). Weights are the tokens assigned over the budget.
    """
    names, tokens = _token_vector(tokens_per_domain)
    _check_positive("budget_tokens", budget_tokens)
    _check_positive("max_epochs", max_epochs)
    _check_budget_fillable(tokens, budget_tokens, max_epochs)
    assigned = np.zeros_like(tokens)
    remaining = float(budget_tokens)
    # A stable sort: ties keep the input order, so the result never depends on sort internals.
    order = np.argsort(tokens, kind="stable")
    for position, index in enumerate(order):
        equal_share = remaining / (len(order) - position)
        assigned[index] = min(equal_share, max_epochs * tokens[index])
        remaining -= assigned[index]
    capped = [names[i] for i in range(len(names)) if assigned[i] >= max_epochs * tokens[i]]
    logger.debug("unimax: %d of %d domains at the %g-epoch cap: %s", len(capped), len(names),
                 max_epochs, ", ".join(capped))
    return _as_weights(names, assigned / assigned.sum())


def _check_budget_fillable(tokens: np.ndarray, budget_tokens: float, max_epochs: float) -> None:
    available = float(tokens.sum()) * max_epochs
    # A relative tolerance: budgets of 1e12 tokens accumulate rounding in the sum.
    if available < budget_tokens * (1 - 1e-12):
        missing = budget_tokens - available
        needed_epochs = budget_tokens / float(tokens.sum())
        raise InputError(
            f"UniMax cannot fill a budget of {budget_tokens:.6g} tokens: all domains together "
            f"at {max_epochs:g} epochs give {available:.6g}, {missing:.6g} tokens short; "
            f"max_epochs >= {needed_epochs:.4g} would suffice (or lower the budget)")


def _token_vector(tokens_per_domain: Mapping[str, float]) -> Tuple[List[str], np.ndarray]:
    return positive_vector(tokens_per_domain, "token count")


def positive_vector(per_domain: Mapping[str, float], what: str) -> Tuple[List[str], np.ndarray]:
    """Domain names and their values (``what``: "token count", "weight"), each finite and > 0."""
    if not isinstance(per_domain, Mapping):
        raise InputError(f"expected a mapping {{domain: {what}}}, got {type(per_domain).__name__}")
    if not per_domain:
        raise InputError(f"no domains: the {{domain: {what}}} mapping is empty")
    for name, value in per_domain.items():
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise InputError(f"domain {name!r}: {what} must be a finite number > 0, got {value!r}")
    names = list(per_domain)
    return names, np.array([float(per_domain[n]) for n in names])


def _check_positive(label: str, value: float) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{label} must be a finite number > 0, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_weights(names: List[str], shares: np.ndarray) -> Dict[str, float]:
    return {name: float(share) for name, share in zip(names, shares)}
