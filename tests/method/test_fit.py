import logging

import numpy as np
import pytest

from autoscale_ds.method.fit import fit_response


def _curve(x, a, b, c):
    return np.power(np.asarray(x) + a, -b) + c


@pytest.mark.parametrize("seed", range(40))
def test_least_squares_recovers_parameters_from_five_points(seed):
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0, 3), rng.uniform(0.2, 3), rng.uniform(-0.5, 0.5)
    x = np.array([0.2, 0.5, 1.0, 2.0, 3.0])
    fit = fit_response("web", x, _curve(x, a, b, c))
    assert fit.a == pytest.approx(a, abs=1e-6)
    assert fit.b == pytest.approx(b, abs=1e-6)
    assert fit.c == pytest.approx(c, abs=1e-6)
    assert fit.rms_residual < 1e-9
    assert not fit.exact  # exact is reserved for the 3-point, fully determined case


@pytest.mark.parametrize("seed", range(40))
def test_three_points_are_interpolated_and_truth_is_a_reported_solution(seed):
    rng = np.random.default_rng(1000 + seed)
    a, b, c = rng.uniform(0, 3), rng.uniform(0.2, 3), rng.uniform(-0.5, 0.5)
    x = np.array([0.2, 1.0, 3.0])
    fit = fit_response("code", x, _curve(x, a, b, c))
    assert fit.exact
    assert np.allclose(fit.predict(x), _curve(x, a, b, c), atol=1e-9)
    # Three points usually admit two exact curves; the truth must be one of those reported
    # (up to a near-double root, where the two coincide closely).
    candidates = [(fit.a, fit.b)] + [tuple(p) for p in fit.alternatives]
    assert any(abs(ca - a) <= 0.1 * (1 + a) and abs(cb - b) <= 0.1 * (1 + b) for ca, cb in candidates)


def test_noisy_points_give_a_close_least_squares_fit():
    rng = np.random.default_rng(7)
    x = np.repeat([0.2, 0.5, 1.0, 2.0, 3.0], 4)
    y = _curve(x, 0.5, 1.0, 0.1) + rng.normal(0, 1e-4, len(x))
    fit = fit_response("books", x, y)
    grid = np.linspace(0.2, 3.0, 50)
    assert np.max(np.abs(fit.predict(grid) - _curve(grid, 0.5, 1.0, 0.1))) < 2e-3
    assert 1e-5 < fit.rms_residual < 5e-4


@pytest.mark.parametrize("y, reason", [
    ([0.9, 1.0, 1.1], "does not decrease"),  # more data hurts
    ([1.01, 1.0, 0.90], "not convex"),  # falls faster with more data
    ([1.0, 1.0, 1.0], "does not decrease"),
])
def test_shapes_outside_the_model_give_a_flat_fit_and_a_warning(y, reason, caplog):
    with caplog.at_level(logging.WARNING):
        fit = fit_response("wiki", [0.2, 1.0, 3.0], y)
    assert fit.flat and fit.b == 0.0 and reason in fit.reason
    assert "wiki" in caplog.text and "flat fit" in caplog.text
    assert fit.predict([0.5, 2.0]) == pytest.approx([np.mean(y)] * 2)


def test_too_few_distinct_ratios_is_a_flat_fit_not_a_crash():
    fit = fit_response("arxiv", [1.0, 1.0, 3.0], [1.0, 1.0, 0.9], warn=False)
    assert fit.flat and "distinct" in fit.reason
