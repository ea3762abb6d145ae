"""RegMix: sampling, regression and search, checked on a synthetic response surface whose
optimum is known exactly."""

import builtins

import numpy as np
import pytest

from autoscale_ds.errors import InputError
from autoscale_ds.method import regmix
from autoscale_ds.method.regmix import (epoch_caps, fit_regression, held_out_fit, required_runs,
                                        sample_mixtures, search_optimum)

NATURAL = {"web": 0.5, "code": 0.25, "books": 0.15, "wiki": 0.07, "math": 0.03}
# Far from natural (L1 distance 0.8) and where the natural-centred prior is thin: the small
# domains must grow several-fold.
OPTIMUM = np.array([0.15, 0.2, 0.25, 0.2, 0.2])
RUNS = 256
NOISE = 0.05  # about a fifth of the targets' spread across sampled mixtures


def surface(weights: np.ndarray) -> np.ndarray:
    """``sum_i p_i (w_i / p_i + 0.2)^(-1/2)``: power-law returns per domain, like a loss.

    For any strictly convex g, ``sum_i p_i g(w_i / p_i)`` on the simplex has its minimum where
    every ``w_i / p_i`` is equal (the Lagrange condition ``g'(w_i / p_i) = λ``), i.e. at
    ``w = p``: the optimum is OPTIMUM exactly.
    """
    return np.sum(OPTIMUM * (np.atleast_2d(weights) / OPTIMUM + 0.2) ** -0.5, axis=1)


@pytest.fixture(scope="module")
def proxy_runs():
    mixtures = sample_mixtures(NATURAL, RUNS, seed=0)
    targets = surface(mixtures) + np.random.default_rng(100).normal(0, NOISE, RUNS)
    return mixtures, targets


def test_the_surfaces_minimum_is_the_stated_optimum():
    candidates = sample_mixtures(NATURAL, 20_000, seed=9, strength_range=(20, 200))
    assert np.all(surface(candidates) >= surface(OPTIMUM)[0])


# ----------------------------------------------------------------------------- sampling

def test_samples_are_mixtures_in_the_natural_order_and_deterministic():
    first = sample_mixtures(NATURAL, 500, seed=3)
    assert first.shape == (500, 5)
    assert np.all(first >= 0) and np.allclose(first.sum(axis=1), 1)
    assert np.array_equal(first, sample_mixtures(NATURAL, 500, seed=3))
    assert not np.array_equal(first, sample_mixtures(NATURAL, 500, seed=4))


def test_samples_centre_on_natural_and_include_sparse_mixtures():
    mixtures = sample_mixtures(NATURAL, 20_000, seed=1)
    # A Dirichlet's mean is its normalised concentration, whatever the strength; the sparse
    # draws make single weights vary a lot (std of this mean about 0.004 for "web").
    assert mixtures.mean(axis=0) == pytest.approx(list(NATURAL.values()), abs=0.015)
    # Small strengths put almost all mass on one domain; larger ones keep every domain in.
    assert np.mean(mixtures.max(axis=1) > 0.9) > 0.2
    assert np.mean(mixtures.min(axis=1) > 1e-3) > 0.05
    distance = lambda m: np.abs(m - list(NATURAL.values())).sum(axis=1).mean()
    sparse = sample_mixtures(NATURAL, 2000, seed=1, strength_range=(0.1, 0.1))
    dense = sample_mixtures(NATURAL, 2000, seed=1, strength_range=(5, 5))
    assert distance(dense) < distance(mixtures) < distance(sparse)


def test_token_counts_are_a_valid_natural_prior():
    tokens = {name: weight * 1e9 for name, weight in NATURAL.items()}
    assert np.array_equal(sample_mixtures(tokens, 50, seed=2), sample_mixtures(NATURAL, 50, seed=2))


def test_maximum_weights_are_enforced_by_redrawing():
    caps = {"web": 0.3, "math": 0.1}
    mixtures = sample_mixtures(NATURAL, 1000, seed=5, max_weight=caps)
    assert mixtures.shape == (1000, 5)
    assert mixtures[:, 0].max() <= 0.3 and mixtures[:, 4].max() <= 0.1
    assert np.allclose(mixtures.sum(axis=1), 1)


def test_epoch_caps_turn_tokens_budget_and_epochs_into_maximum_weights():
    caps = epoch_caps({"web": 1000, "math": 10}, budget_tokens=100, max_epochs=4)
    assert caps == {"web": 1.0, "math": pytest.approx(0.4)}


def test_minimum_weight_zeroes_small_weights_and_renormalises():
    mixtures = sample_mixtures(NATURAL, 1000, seed=6, min_weight=0.01)
    assert np.all((mixtures == 0) | (mixtures >= 0.01))
    assert np.allclose(mixtures.sum(axis=1), 1)
    assert np.any(mixtures == 0)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_weight": {"web": 0.1, "code": 0.1, "books": 0.1, "wiki": 0.1, "math": 0.1}}, "sum to 0.5"),
    ({"max_weight": {"blogs": 0.5}}, "blogs"),
    ({"max_weight": {"web": 0.0}}, "'web'"),
    ({"min_weight": 0.5}, "min_weight"),
    ({"strength_range": (5, 0.1)}, "strength_range"),
    ({"prior_power": 0}, "prior_power"),
    ({"count": 0}, "count"),
])
def test_bad_sampling_options_are_rejected(kwargs, fragment):
    arguments = {"natural": NATURAL, "count": 10, "seed": 0, **kwargs}
    with pytest.raises(InputError, match=fragment):
        sample_mixtures(**arguments)


def test_caps_too_tight_for_the_prior_give_up_with_advice(monkeypatch):
    monkeypatch.setattr(regmix, "MAX_DRAWS_PER_MIXTURE", 5)
    caps = {name: 0.21 for name in NATURAL}  # feasible (sum 1.05) but almost never drawn
    with pytest.raises(InputError, match="caps are too tight"):
        sample_mixtures(NATURAL, 50, seed=0, max_weight=caps)


@pytest.mark.parametrize("natural, fragment", [({}, "empty"), ({"web": 0.5, "code": 0.0}, "'code'"),
                                                ({"web": float("nan"), "code": 1}, "'web'")])
def test_bad_natural_mixtures_are_named(natural, fragment):
    with pytest.raises(InputError, match=fragment):
        sample_mixtures(natural, 10, seed=0)


# ----------------------------------------------------------------------------- regression

def test_ridge_recovers_the_known_optimum(proxy_runs):
    mixtures, targets = proxy_runs
    model = fit_regression(mixtures, targets, method="ridge", seed=0)
    assert model.kind == "ridge"
    assert model.held_out["spearman"] > 0.9 and model.held_out["r2"] > 0.8
    found = search_optimum(model, NATURAL, seed=1)
    weights = np.array(list(found.weights.values()))
    # Measured over seeds 0-9: L1 0.10-0.23, max 0.03-0.08 (the natural mixture is 0.8 / 0.35 off).
    assert np.abs(weights - OPTIMUM).sum() < 0.3
    assert np.abs(weights - OPTIMUM).max() < 0.1
    assert found.predicted == pytest.approx(surface(OPTIMUM)[0], abs=3 * NOISE)


def test_lightgbm_recovers_the_known_optimum_within_a_looser_bound(proxy_runs):
    pytest.importorskip("lightgbm")
    mixtures, targets = proxy_runs
    model = fit_regression(mixtures, targets, method="lightgbm", seed=0)
    assert model.kind == "lightgbm"
    assert model.held_out["spearman"] > 0.9
    # Trees predict piecewise-constant values, so many candidates tie near the bottom and the
    # top-k average is blurrier than the ridge's: over seeds 0-9 L1 0.19-0.33, max 0.06-0.15.
    found = search_optimum(model, NATURAL, seed=1, candidates=30_000)
    weights = np.array(list(found.weights.values()))
    assert np.abs(weights - OPTIMUM).sum() < 0.4
    assert np.abs(weights - OPTIMUM).max() < 0.2


def test_auto_uses_lightgbm_when_installed(proxy_runs):
    pytest.importorskip("lightgbm")
    mixtures, targets = proxy_runs
    assert fit_regression(mixtures[:40], targets[:40], report=False).kind == "lightgbm"


def test_without_lightgbm_auto_falls_back_to_ridge_and_lightgbm_is_refused(proxy_runs, monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "lightgbm" or name.startswith("lightgbm."):
            raise ImportError("No module named 'lightgbm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    mixtures, targets = proxy_runs
    model = fit_regression(mixtures, targets, method="auto")
    assert model.kind == "ridge" and model.held_out["kind"] == "ridge"
    with pytest.raises(InputError, match=r"pip install 'autoscale-ds\[regmix\]'"):
        fit_regression(mixtures, targets, method="lightgbm")


@pytest.mark.parametrize("method", ["ridge", "lightgbm"])
def test_fit_report_and_search_are_deterministic(proxy_runs, method):
    if method == "lightgbm":
        pytest.importorskip("lightgbm")
    mixtures, targets = proxy_runs[0][:60], proxy_runs[1][:60]
    first = fit_regression(mixtures, targets, method=method, seed=4)
    second = fit_regression(mixtures, targets, method=method, seed=4)
    assert first.held_out == second.held_out
    assert held_out_fit(mixtures, targets, method=method, seed=4) == first.held_out
    one = search_optimum(first, NATURAL, seed=2, candidates=2000, top_k=20)
    two = search_optimum(second, NATURAL, seed=2, candidates=2000, top_k=20)
    assert one == two


def test_held_out_report_has_the_stated_fields(proxy_runs):
    report = held_out_fit(*proxy_runs, method="ridge", folds=4)
    assert set(report) == {"kind", "runs", "folds", "spearman", "r2", "mae"}
    assert report["runs"] == RUNS and report["folds"] == 4 and report["mae"] > 0


def test_maximize_searches_for_the_highest_prediction(proxy_runs):
    model = fit_regression(*proxy_runs, method="ridge", report=False)
    lowest = search_optimum(model, NATURAL, seed=0, candidates=5000)
    highest = search_optimum(model, NATURAL, seed=0, candidates=5000, maximize=True)
    assert highest.top_k_predicted > lowest.top_k_predicted


def test_search_respects_maximum_weights(proxy_runs):
    model = fit_regression(*proxy_runs, method="ridge", report=False)
    found = search_optimum(model, NATURAL, seed=0, candidates=5000, max_weight={"math": 0.1})
    assert found.weights["math"] <= 0.1
    assert sum(found.weights.values()) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- input errors

def test_a_nan_target_names_its_row(proxy_runs):
    mixtures, targets = proxy_runs
    targets = targets.copy()
    targets[17] = np.nan
    with pytest.raises(InputError, match="row 17 .*exclude failed runs"):
        fit_regression(mixtures, targets, method="ridge")


def test_too_few_runs_says_how_many_are_needed(proxy_runs):
    mixtures, targets = proxy_runs
    assert required_runs(5) == 10 and required_runs(17) == 19
    with pytest.raises(InputError, match="at least 10 ok runs for 5 domains"):
        fit_regression(mixtures[:9], targets[:9], method="ridge")


@pytest.mark.parametrize("mutate, fragment", [
    (lambda m, t: (m, t[:-1]), "one target per mixture row"),
    (lambda m, t: (m[:, 0], t), "2-D"),
    (lambda m, t: (np.vstack([m[:-1], [0.5, 0.5, 0.5, 0, 0]]), t), f"row {RUNS - 1}: weights sum"),
    (lambda m, t: (np.vstack([[-0.1, 0.6, 0.5, 0, 0], m[1:]]), t), "row 0: weights must be"),
])
def test_mismatched_or_malformed_training_data_is_rejected(proxy_runs, mutate, fragment):
    mixtures, targets = mutate(*proxy_runs)
    with pytest.raises(InputError, match=fragment):
        fit_regression(mixtures, targets, method="ridge")


def test_unknown_method_and_wrong_width_are_rejected(proxy_runs):
    with pytest.raises(InputError, match="one of auto, lightgbm, ridge"):
        fit_regression(*proxy_runs, method="xgboost")
    model = fit_regression(*proxy_runs, method="ridge", report=False)
    with pytest.raises(InputError, match="5 domain weights per row"):
        model.predict(np.ones((3, 4)) / 4)
    with pytest.raises(InputError, match="fitted on 5 domains"):
        search_optimum(model, {"web": 1.0, "code": 1.0}, seed=0)
    with pytest.raises(InputError, match="top_k"):
        search_optimum(model, NATURAL, seed=0, candidates=10, top_k=20)
