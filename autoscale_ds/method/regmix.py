"""RegMix: data mixture as regression (Liu et al. 2024, "RegMix: Data Mixture as Regression for
Language Model Pre-training", arXiv:2407.01492).

The method has three steps; this module holds the math of each, the proxy runs are elsewhere:

1. **Sample** ``N`` training mixtures for small proxy runs (:func:`sample_mixtures`). As in the
   paper (Sec. 3, "Train small-scale proxy models") the mixtures are Dirichlet draws whose
   concentration is the natural (token) distribution times a *strength*; the strength varies
   from draw to draw so that both dense mixtures (large strength: every domain present, spread
   around the natural proportions) and sparse ones (small strength: most mass on one or two
   domains) are sampled; the mean of every draw is the natural mixture. Here each draw takes its own
   strength log-uniformly in ``[0.1, 5]``; the authors' released generator uses that same range
   but picks among 15 log-spaced values. Optional per-domain maximum weights (a cap on
   epochs, see :func:`epoch_caps`) are enforced by *rejecting and redrawing*, as the released
   generator does, so accepted mixtures are the prior conditioned on the caps (clipping would
   pile mass up exactly at the caps). An optional minimum weight zeroes smaller weights and
   renormalises (a domain with a handful of samples in a proxy run measures nothing).
2. **Fit** a regression from the mixture weights to the target, e.g. a validation loss
   (:func:`fit_regression`). The paper uses LightGBM on the raw weights; it is used here when
   ``lightgbm`` is installed (extra ``regmix``). Otherwise, or with ``method="ridge"``, a
   closed-form ridge regression on the weights, their pairwise products and their logs, its
   penalty chosen by exact leave-one-out error (computed for all penalties at once from one
   SVD). Every fit carries a deterministic k-fold held-out report (:func:`held_out_fit`):
   Spearman rank correlation, R² and MAE of predictions on runs the model did not see.
3. **Search** (:func:`search_optimum`): sample many candidate mixtures from the same prior,
   predict each, and average the top-k best predicted (paper Sec. 3, "Simulate and predict":
   averaging the top 100 of many simulated mixtures is more robust than the single argmin
   of a noisy regressor).

Everything is deterministic for a given seed. Pure numpy/scipy; ``lightgbm`` is imported
only inside the fit, so importing this module never needs it.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import spearmanr

from ..errors import InputError
from .baselines import positive_vector

logger = logging.getLogger(__name__)

STRENGTH_RANGE = (0.1, 5.0)
"""Dirichlet strengths (concentration = strength × prior) of the released RegMix generator."""
DEFAULT_FOLDS = 5
METHODS = ("auto", "lightgbm", "ridge")
MAX_DRAWS_PER_MIXTURE = 1000
"""Rejection sampling gives up after this many draws per requested mixture: caps that tight
need a different prior, not more draws."""
ROW_SUM_TOLERANCE = 1e-3
"""Mixture rows may be rounded when recorded; more than this off 1 is not a mixture."""
LOG_FLOOR = 0.02
"""The ridge's log features use ``log(w + LOG_FLOOR)``: sampled weights can be exactly 0, and a
smaller floor lets the steep log near 0 extrapolate wildly into sparse corners the search then
picks (on synthetic surfaces 1e-3 missed the optimum by up to 0.73 in L1, 0.02 by at most 0.25)."""
RIDGE_RELATIVE_ALPHAS = np.logspace(-8, 2, 41)
"""Penalties tried, relative to the largest squared singular value of the standardised features."""
PREDICT_CHUNK = 16384
"""Rows per block when predicting 100k candidates: the ridge's pairwise features of a whole
search would take hundreds of MB."""
LIGHTGBM_ROUNDS = 300
LIGHTGBM_PARAMS = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 5,
    # One thread and the deterministic flag: the same seed gives the same trees on any machine.
    "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbosity": -1,
}


# ----------------------------------------------------------------------------- sampling

def epoch_caps(tokens_per_domain: Mapping[str, float], budget_tokens: float,
               max_epochs: float) -> Dict[str, float]:
    """Maximum weight per domain so that no domain is repeated more than ``max_epochs`` times
    in a run of ``budget_tokens``: ``min(1, max_epochs * tokens / budget)``."""
    names, tokens = positive_vector(tokens_per_domain, "token count")
    for label, value in (("budget_tokens", budget_tokens), ("max_epochs", max_epochs)):
        if not _finite_positive(value):
            raise InputError(f"{label} must be a finite number > 0, got {value!r}")
    return {n: float(min(1.0, max_epochs * t / budget_tokens)) for n, t in zip(names, tokens)}


def sample_mixtures(natural: Mapping[str, float], count: int, seed: int, *,
                    min_weight: float = 0.0, max_weight: Optional[Mapping[str, float]] = None,
                    strength_range: Tuple[float, float] = STRENGTH_RANGE,
                    prior_power: float = 1.0) -> np.ndarray:
    """``count`` random mixtures, shape ``(count, domains)``, columns in ``natural``'s order.

    ``natural``: token counts or weights per domain (normalised here). Each row is a Dirichlet
    draw with concentration ``strength * prior``, ``prior ∝ natural^prior_power`` (a power
    below 1 smooths a skewed prior, as the released generator's temperature 0.5 does), and
    ``strength`` log-uniform in ``strength_range``. Weights below ``min_weight`` are zeroed
    and the row renormalised; rows above any ``max_weight[domain]`` are rejected and redrawn.
    """
    names, prior = positive_vector(natural, "natural weight")
    _check_count("count", count)
    prior = _powered_prior(prior, prior_power)
    caps = _caps_vector(names, max_weight)
    _check_min_weight(min_weight, len(names))
    low, high = _checked_strengths(strength_range)
    rng = np.random.default_rng(seed)
    batch = max(count, 256)
    accepted, drawn = [], 0
    while sum(len(a) for a in accepted) < count:
        if drawn >= count * MAX_DRAWS_PER_MIXTURE:
            raise InputError(_rejection_message(count, sum(len(a) for a in accepted), drawn))
        rows = _dirichlet_rows(rng, prior, batch, low, high)
        rows = _apply_min_weight(rows, min_weight)
        accepted.append(rows[_within_caps(rows, caps)])
        drawn += batch
    return np.concatenate(accepted)[:count]


def _dirichlet_rows(rng: np.random.Generator, prior: np.ndarray, rows: int, low: float,
                    high: float) -> np.ndarray:
    strengths = np.exp(rng.uniform(math.log(low), math.log(high), size=rows))
    # A Dirichlet draw is normalised Gamma draws; this way each row has its own concentration.
    gammas = rng.gamma(shape=strengths[:, None] * prior[None, :])
    totals = gammas.sum(axis=1, keepdims=True)
    # Tiny concentrations can underflow every Gamma draw of a row to 0: such rows are dropped.
    usable = totals[:, 0] > 0
    return gammas[usable] / totals[usable]


def _apply_min_weight(rows: np.ndarray, min_weight: float) -> np.ndarray:
    if min_weight <= 0:
        return rows
    kept = np.where(rows < min_weight, 0.0, rows)
    totals = kept.sum(axis=1, keepdims=True)
    usable = totals[:, 0] > 0
    return kept[usable] / totals[usable]


def _within_caps(rows: np.ndarray, caps: Optional[np.ndarray]) -> np.ndarray:
    if caps is None:
        return np.ones(len(rows), dtype=bool)
    return np.all(rows <= caps[None, :], axis=1)


def _rejection_message(count: int, accepted: int, drawn: int) -> str:
    return (f"only {accepted} of {count} mixtures satisfied the maximum weights after {drawn} "
            f"Dirichlet draws: the caps are too tight for the prior; raise them (e.g. allow more "
            f"epochs), use a smaller count, or flatten the prior (prior_power < 1)")


def _powered_prior(prior: np.ndarray, power: float) -> np.ndarray:
    if not _finite_positive(power):
        raise InputError(f"prior_power must be a finite number > 0, got {power!r}")
    shares = prior / prior.sum()
    powered = np.exp(power * np.log(shares))
    return powered / powered.sum()


def _caps_vector(names: Sequence[str], max_weight: Optional[Mapping[str, float]]) -> Optional[np.ndarray]:
    if max_weight is None:
        return None
    unknown = sorted(set(max_weight) - set(names))
    if unknown:
        raise InputError(f"max_weight names domains not in the natural mixture: {unknown}")
    caps = np.array([float(max_weight.get(n, 1.0)) for n in names])
    for name, cap in zip(names, caps):
        if not (math.isfinite(cap) and 0 < cap <= 1):
            raise InputError(f"domain {name!r}: max_weight must be in (0, 1], got {cap!r}")
    if caps.sum() < 1:
        raise InputError(f"the maximum weights sum to {caps.sum():.4g} < 1: no mixture satisfies "
                         f"them; raise the caps (allow more epochs) or add domains")
    return caps


def _check_min_weight(min_weight: float, domains: int) -> None:
    if not (isinstance(min_weight, (int, float)) and 0 <= min_weight < 1 / domains):
        raise InputError(f"min_weight must be in [0, 1/{domains}) for {domains} domains, "
                         f"got {min_weight!r}")


def _checked_strengths(strength_range: Tuple[float, float]) -> Tuple[float, float]:
    try:
        low, high = (float(v) for v in strength_range)
    except (TypeError, ValueError):
        raise InputError(f"strength_range must be two numbers (low, high), got {strength_range!r}")
    if not (_finite_positive(low) and _finite_positive(high) and low <= high):
        raise InputError(f"strength_range must satisfy 0 < low <= high, got {strength_range!r}")
    return low, high


# ----------------------------------------------------------------------------- regression

@dataclass
class MixtureRegressor:
    """A fitted map from mixture weights (rows) to the target objective."""

    kind: str
    """"lightgbm" or "ridge"."""
    domains: int
    predict_rows: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    details: dict = field(default_factory=dict)
    """What was chosen in the fit, e.g. the ridge penalty or LightGBM's parameters."""
    held_out: Optional[dict] = None
    """The k-fold report of :func:`held_out_fit` on the training runs."""

    def predict(self, matrix) -> np.ndarray:
        rows = np.asarray(matrix, dtype=float)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.domains:
            raise InputError(f"this model predicts from {self.domains} domain weights per row, "
                             f"got an array of shape {np.shape(matrix)}")
        blocks = [self.predict_rows(rows[i:i + PREDICT_CHUNK])
                  for i in range(0, len(rows), PREDICT_CHUNK)]
        return np.concatenate(blocks) if blocks else np.empty(0)


def required_runs(domains: int, folds: int = DEFAULT_FOLDS) -> int:
    """Fewest ok runs a fit accepts: every held-out fold needs two runs, and a model in
    ``domains`` weights is not pinned down by fewer than ``domains + 2`` runs."""
    return max(2 * folds, domains + 2)


def fit_regression(weights_matrix, targets, method: str = "auto", *, seed: int = 0,
                   folds: int = DEFAULT_FOLDS, report: bool = True,
                   lightgbm_params: Optional[dict] = None) -> MixtureRegressor:
    """Fit the target (e.g. a validation loss) as a function of the mixture weights.

    ``weights_matrix``: ``(runs, domains)``, one mixture per ok proxy run; ``targets``: one
    finite value per run (drop failed runs first). ``method``: "lightgbm" (the paper's; needs
    ``pip install 'autoscale-ds[regmix]'``), "ridge", or "auto" (LightGBM when importable).
    With ``report`` the model's ``held_out`` holds :func:`held_out_fit`'s k-fold report.
    """
    rows, values = _checked_training_data(weights_matrix, targets, folds)
    kind = _resolve_method(method)
    predict_rows, details = _FITTERS[kind](rows, values, seed, lightgbm_params)
    model = MixtureRegressor(kind, rows.shape[1], predict_rows, details)
    if report:
        model.held_out = _k_fold_report(rows, values, kind, folds, seed, lightgbm_params)
        logger.info("RegMix %s fit on %d runs: held-out Spearman %.3f, R² %.3f, MAE %.4g",
                    kind, len(rows), model.held_out["spearman"], model.held_out["r2"],
                    model.held_out["mae"])
    return model


def held_out_fit(weights_matrix, targets, method: str = "auto", *, folds: int = DEFAULT_FOLDS,
                 seed: int = 0, lightgbm_params: Optional[dict] = None) -> dict:
    """Deterministic k-fold cross-validation of :func:`fit_regression`.

    Runs are shuffled by ``seed`` and split into ``folds`` parts; each part is predicted by a
    model fitted on the others. Returns ``{"kind", "runs", "folds", "spearman", "r2", "mae"}``
    over all held-out predictions (Spearman: does the model rank mixtures right, which is all
    the search needs; R² and MAE: how close the values are).
    """
    rows, values = _checked_training_data(weights_matrix, targets, folds)
    return _k_fold_report(rows, values, _resolve_method(method), folds, seed, lightgbm_params)


def _k_fold_report(rows: np.ndarray, values: np.ndarray, kind: str, folds: int, seed: int,
                   lightgbm_params: Optional[dict]) -> dict:
    order = np.random.default_rng(seed).permutation(len(rows))
    predicted = np.empty(len(rows))
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        predict_rows, _ = _FITTERS[kind](rows[train], values[train], seed, lightgbm_params)
        predicted[held] = predict_rows(rows[held])
    return {"kind": kind, "runs": len(rows), "folds": folds,
            "spearman": _spearman(values, predicted), "r2": _r_squared(values, predicted),
            "mae": float(np.mean(np.abs(values - predicted)))}


def _spearman(truth: np.ndarray, predicted: np.ndarray) -> float:
    # A constant prediction ranks nothing: report 0 rather than scipy's NaN and warning.
    if np.ptp(predicted) == 0 or np.ptp(truth) == 0:
        return 0.0
    return float(spearmanr(truth, predicted).statistic)


def _r_squared(truth: np.ndarray, predicted: np.ndarray) -> float:
    spread = float(np.sum((truth - truth.mean()) ** 2))
    residual = float(np.sum((truth - predicted) ** 2))
    return 1.0 - residual / spread if spread > 0 else 0.0


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"regression method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "ridge":
        return "ridge"
    if _lightgbm() is not None:
        return "lightgbm"
    if method == "lightgbm":
        raise InputError("method='lightgbm' needs the lightgbm package: pip install "
                         "'autoscale-ds[regmix]' (or use method='ridge')")
    logger.info("lightgbm is not installed: RegMix falls back to the ridge regression")
    return "ridge"


def _lightgbm():
    """The lightgbm module, or None when it cannot be imported."""
    try:
        import lightgbm
    except ImportError:
        return None
    return lightgbm


def _checked_training_data(weights_matrix, targets, folds: int) -> Tuple[np.ndarray, np.ndarray]:
    rows = _checked_matrix(weights_matrix)
    values = np.asarray(targets, dtype=float)
    if values.ndim != 1 or len(values) != len(rows):
        raise InputError(f"{len(rows)} mixtures but targets of shape {values.shape}: give one "
                         f"target per mixture row")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(f"row {bad[0]} has target {values[bad[0]]!r} (a failed run?): exclude "
                         f"failed runs before fitting ({bad.size} row(s) affected: "
                         f"{bad[:10].tolist()})")
    if not (isinstance(folds, int) and folds >= 2):
        raise InputError(f"folds must be an integer >= 2, got {folds!r}")
    needed = required_runs(rows.shape[1], folds)
    if len(rows) < needed:
        raise InputError(f"RegMix's regression needs at least {needed} ok runs for "
                         f"{rows.shape[1]} domains and {folds} folds, got {len(rows)} (the paper "
                         f"fits 512 proxy runs for 17 domains)")
    return rows, values


def _checked_matrix(weights_matrix) -> np.ndarray:
    rows = np.asarray(weights_matrix, dtype=float)
    if rows.ndim != 2 or rows.shape[1] < 2:
        raise InputError(f"the weights matrix must be 2-D, one row per run and one column per "
                         f"domain (2 or more), got shape {rows.shape}")
    for index, row in enumerate(rows):
        if not np.all(np.isfinite(row)) or np.any(row < 0):
            raise InputError(f"row {index}: weights must be finite and >= 0, got {row.tolist()}")
        if abs(row.sum() - 1) > ROW_SUM_TOLERANCE:
            raise InputError(f"row {index}: weights sum to {row.sum():.6g}, not 1")
    return rows


def _fit_ridge(rows: np.ndarray, values: np.ndarray, seed: int,
               lightgbm_params: Optional[dict]) -> Tuple[Callable, dict]:
    """Closed-form ridge on standardised features; penalty by exact leave-one-out error."""
    features = _ridge_features(rows)
    centre, scale = features.mean(axis=0), features.std(axis=0)
    scale[scale == 0] = 1.0  # constant columns carry nothing; keep them finite
    standardised = (features - centre) / scale
    offset = values.mean()
    u, s, vt = np.linalg.svd(standardised, full_matrices=False)
    projected = u.T @ (values - offset)
    alphas = RIDGE_RELATIVE_ALPHAS * float(s[0] ** 2 if s.size and s[0] > 0 else 1.0)
    errors = [_loo_error(u, s, projected, values - offset, alpha) for alpha in alphas]
    alpha = float(alphas[int(np.argmin(errors))])
    coefficients = vt.T @ (s / (s ** 2 + alpha) * projected)

    def predict_rows(matrix: np.ndarray) -> np.ndarray:
        return ((_ridge_features(matrix) - centre) / scale) @ coefficients + offset

    return predict_rows, {"alpha": alpha, "features": features.shape[1],
                          "loo_rmse": float(math.sqrt(min(errors)))}


def _loo_error(u: np.ndarray, s: np.ndarray, projected: np.ndarray, centred: np.ndarray,
               alpha: float) -> float:
    """Mean squared leave-one-out residual: ``r_i / (1 - H_ii)`` for a linear smoother.

    Exact for the penalised coefficients; the centring uses all rows, a 1/n approximation
    that does not change which penalty wins.
    """
    shrink = s ** 2 / (s ** 2 + alpha)
    fitted = u @ (shrink * projected)
    leverage = (u ** 2) @ shrink
    # Leverage reaches 1 only without a penalty; the floor keeps the ratio finite there.
    residuals = (centred - fitted) / np.maximum(1.0 - leverage, 1e-9)
    return float(np.mean(residuals ** 2))


def _ridge_features(rows: np.ndarray) -> np.ndarray:
    """Weights, their pairwise products (squares included) and logs.

    Losses respond to a domain's weight with diminishing returns (log-like) and domains
    interact (pairs); a plain linear model in the weights has its optimum on a vertex.
    """
    upper = np.triu_indices(rows.shape[1])
    pairs = rows[:, upper[0]] * rows[:, upper[1]]
    return np.hstack([rows, pairs, np.log(rows + LOG_FLOOR)])


def _fit_lightgbm(rows: np.ndarray, values: np.ndarray, seed: int,
                  lightgbm_params: Optional[dict]) -> Tuple[Callable, dict]:
    """Gradient-boosted trees on the raw weights, as in the paper (through lightgbm's own
    ``train`` API: the same booster as ``LGBMRegressor`` without scikit-learn)."""
    lightgbm = _lightgbm()
    params = {**LIGHTGBM_PARAMS, "seed": seed, **(lightgbm_params or {})}
    rounds = int(params.pop("num_boost_round", LIGHTGBM_ROUNDS))
    booster = lightgbm.train(params, lightgbm.Dataset(rows, label=values), num_boost_round=rounds)

    def predict_rows(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix, num_threads=1), dtype=float)

    return predict_rows, {"params": params, "num_boost_round": rounds}


_FITTERS = {"ridge": _fit_ridge, "lightgbm": _fit_lightgbm}


# ----------------------------------------------------------------------------- search

@dataclass(frozen=True)
class RegMixOptimum:
    weights: Dict[str, float]
    """The average of the top-k candidates, in the natural mixture's domain order."""
    predicted: float
    """The model's prediction at ``weights``."""
    top_k_predicted: float
    """The mean prediction over the top-k candidates themselves."""
    candidates: int
    top_k: int


def search_optimum(model: MixtureRegressor, natural: Mapping[str, float], seed: int,
                   candidates: int = 100_000, top_k: int = 100, *, maximize: bool = False,
                   min_weight: float = 0.0, max_weight: Optional[Mapping[str, float]] = None,
                   strength_range: Tuple[float, float] = STRENGTH_RANGE,
                   prior_power: float = 1.0) -> RegMixOptimum:
    """The paper's search: predict ``candidates`` mixtures drawn from the sampling prior and
    average the ``top_k`` best (lowest, or highest with ``maximize``).

    The prior options are :func:`sample_mixtures`'s; pass the ones the proxy runs were drawn
    with so the search stays where the model was fitted. The average of capped mixtures is
    within the caps; it may hold weights below ``min_weight``.
    """
    if len(natural) != model.domains:
        raise InputError(f"the model was fitted on {model.domains} domains but the natural "
                         f"mixture has {len(natural)}")
    _check_count("candidates", candidates)
    _check_count("top_k", top_k)
    if top_k > candidates:
        raise InputError(f"top_k ({top_k}) cannot exceed candidates ({candidates})")
    pool = sample_mixtures(natural, candidates, seed, min_weight=min_weight, max_weight=max_weight,
                           strength_range=strength_range, prior_power=prior_power)
    predictions = model.predict(pool)
    ranked = np.argsort(-predictions if maximize else predictions, kind="stable")[:top_k]
    average = pool[ranked].mean(axis=0)
    average /= average.sum()
    return RegMixOptimum(
        weights={name: float(w) for name, w in zip(natural, average)},
        predicted=float(model.predict(average)[0]),
        top_k_predicted=float(predictions[ranked].mean()),
        candidates=candidates, top_k=top_k)


def _check_count(label: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{label} must be an integer >= 1, got {value!r}")


def _finite_positive(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
