"""Backtest: can the extrapolation be trusted on this data, before the target run is paid for?

With DDO mixtures at three or more budgets, the largest is held out and predicted from the
smaller ones, exactly as the target will be predicted from all of them. We report, per
domain, the predicted and the DDO weight and their absolute difference, and what the
difference costs by the held-out budget's own fitted responses: the DDO model's relative
objective ``sum_i (x_i + a_i)^(-b_i)`` at the predicted quantities minus at the DDO ones
(a fraction of the base run's objective; > 0 means the prediction is predicted to be worse).
Both methods are backtested, so the user sees which one their data supports: the
noise-aware one (noise-aware DDO mixtures and predictor, judged against the held-out budget's
noise-aware DDO mixture) and the paper's plain one (the plain DDO optima and predictor, judged
against the held-out plain optimum). The record's shape (``autoscale.backtest/v1``) is a public contract.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..formats.schemas import Mixture
from .noise_aware import unshrunk
from .predict import PredictGuards, predict

SCHEMA = "autoscale.backtest/v1"
MIN_BUDGETS = 3


def backtest(mixtures: Sequence[Mixture], guards: Optional[PredictGuards] = None,
             noise_aware: bool = True) -> dict:
    """The ``autoscale.backtest/v1`` record of predicting the largest budget's mixture."""
    if len(mixtures) < MIN_BUDGETS:
        raise InputError(f"a backtest needs DDO mixtures at {MIN_BUDGETS} or more budgets (it "
                         f"predicts the largest from the others), got {len(mixtures)}")
    ordered = sorted(mixtures, key=lambda m: m.total_tokens)
    held_out, inputs = ordered[-1], ordered[:-1]
    methods = {"noise_aware": True, "plain": False} if noise_aware else {"plain": False}
    results = {name: _method(inputs, held_out, guards, flag) for name, flag in methods.items()}
    chosen = results["noise_aware" if noise_aware else "plain"]
    return {
        "schema": SCHEMA,
        "method": "noise_aware" if noise_aware else "plain",
        "held_out_budget": held_out.total_tokens,
        "input_budgets": [m.total_tokens for m in inputs],
        "domains": chosen["domains"],
        "mean_abs_error": chosen["mean_abs_error"],
        "max_abs_error": chosen["max_abs_error"],
        "predicted_objective_loss": chosen["predicted_objective_loss"],
        "methods": results,
    }


def _method(inputs: List[Mixture], held_out: Mixture, guards, noise_aware: bool) -> dict:
    if not noise_aware:  # the paper's method throughout: the plain DDO optima
        inputs, held_out = [unshrunk(m) for m in inputs], unshrunk(held_out)
    prediction = predict(inputs, target_tokens=held_out.total_tokens, guards=guards,
                         noise_aware=noise_aware)
    domains = {d: {"predicted": prediction.weights[d], "ddo": held_out.weights[d],
                   "abs_error": abs(prediction.weights[d] - held_out.weights[d])}
               for d in held_out.weights}
    errors = [entry["abs_error"] for entry in domains.values()]
    return {"domains": domains, "mean_abs_error": float(np.mean(errors)),
            "max_abs_error": float(max(errors)),
            "predicted_objective_loss": objective_loss(held_out, prediction.weights)}


def objective_loss(ddo_mixture: Mixture, weights: Dict[str, float]) -> Optional[dict]:
    """The fitted DDO objective at ``weights`` minus at the mixture's own weights, both at
    its total budget, or None when the mixture records no fits (e.g. a hand-made file)."""
    provenance = ddo_mixture.provenance
    fits, base = provenance.get("fits"), provenance.get("base_tokens")
    if not (isinstance(fits, dict) and isinstance(base, dict)
            and set(fits) >= set(weights) and set(base) >= set(weights)):
        return None
    domains = list(weights)
    total = float(ddo_mixture.total_tokens)
    a = np.array([float(fits[d]["a"]) for d in domains])
    b = np.array([float(fits[d]["b"]) for d in domains])
    base_tokens = np.array([float(base[d]) for d in domains])
    x_candidate = np.array([weights[d] for d in domains]) * total / base_tokens
    x_ddo = np.array([ddo_mixture.weights[d] for d in domains]) * total / base_tokens
    loss = float(np.sum((x_candidate + a) ** -b) - np.sum((x_ddo + a) ** -b))
    bounds = provenance.get("bounds", {})
    outside = [d for d, x in zip(domains, x_candidate)
               if d in bounds and not (bounds[d][0] * (1 - 1e-9) <= x <= bounds[d][1] * (1 + 1e-9))]
    return {"relative": loss if math.isfinite(loss) else None,
            "outside_fitted_ratios": outside,
            "note": "relative objective (fraction of the base run's), by the held-out budget's "
                    "fitted responses; domains outside their fitted ratios are extrapolated"}


# --------------------------------------------------------------------- tables (CLI, report)

def summary_rows(record: dict) -> Tuple[List[str], List[list]]:
    """Headers and one row per method: mean and max error, predicted objective loss."""
    rows = [[name.replace("_", "-"), f"{result['mean_abs_error']:.4f}",
             f"{result['max_abs_error']:.4f}", _loss_text(result)]
            for name, result in record["methods"].items()]
    return ["method", "mean abs error", "max abs error", "predicted objective loss"], rows


def domain_rows(record: dict) -> Tuple[List[str], List[list]]:
    """Headers and one row per domain: each method's own held-out DDO weight, its
    prediction and the error."""
    methods = record["methods"]
    names = [m.replace("_", "-") for m in methods]
    headers = ["domain", *[f"{n} {c}" for n in names for c in ("DDO w", "predicted", "error")]]
    rows = [[d, *[f"{methods[m]['domains'][d][k]:.4f}" for m in methods
                  for k in ("ddo", "predicted", "abs_error")]] for d in record["domains"]]
    return headers, rows


def _loss_text(result: dict) -> str:
    loss = result["predicted_objective_loss"]
    return "n/a" if not loss or loss["relative"] is None else f"{loss['relative']:+.4f}"
