import numpy as np
import pytest
from scipy.optimize import minimize

from autoscale_ds.errors import InfeasibleError
from autoscale_ds.method.solve import solve_ddo


def _scipy_optimum(a, b, base, lo, hi, rng):
    objective = lambda x: float(np.sum(np.power(x + a, -b)))
    gradient = lambda x: -b * np.power(x + a, -b - 1)
    # The budget in units of itself: a constraint of size 1e7 stalls SLSQP's line search
    # ("positive directional derivative") before its tolerance on some of these problems.
    share = base / base.sum()
    budget = {"type": "eq", "fun": lambda x: float(x @ share - 1.0), "jac": lambda x: share}
    best = None
    for _ in range(6):
        start = rng.uniform(lo, hi)
        result = minimize(objective, start, jac=gradient, method="SLSQP", bounds=list(zip(lo, hi)),
                          constraints=[budget], options={"ftol": 1e-15, "maxiter": 2000})
        if result.success and (best is None or result.fun < best.fun):
            best = result
    return best


@pytest.mark.parametrize("seed", range(60))
def test_kkt_optimum_matches_a_general_constrained_solver(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(2, 10))
    a, b = rng.uniform(0, 3, m), rng.uniform(0.1, 3, m)
    base = rng.uniform(1e5, 1e7, m)
    lo, hi = rng.uniform(0.1, 0.9, m), rng.uniform(1.1, 4.0, m)
    ours = solve_ddo(a, b, base, lo, hi)
    reference = _scipy_optimum(a, b, base, lo, hi, rng)
    assert reference is not None
    assert ours.objective <= reference.fun + 1e-10  # never worse than the general solver
    assert np.allclose(ours.ratios, reference.x, atol=1e-5)
    assert ours.ratios @ base == pytest.approx(base.sum(), rel=1e-11)
    for i, bound in enumerate(ours.active):
        at_lo = abs(reference.x[i] - lo[i]) < 1e-6
        at_hi = abs(reference.x[i] - hi[i]) < 1e-6
        assert (bound == "lower") == at_lo and (bound == "upper") == at_hi


def test_free_domains_share_one_marginal_gain_per_token():
    a, b = np.array([0.5, 1.0, 2.0]), np.array([0.7, 1.2, 0.4])
    base = np.array([1e6, 2e6, 3e6])
    result = solve_ddo(a, b, base, [1e-3] * 3, [100.0] * 3)
    free = [i for i, bound in enumerate(result.active) if bound is None]
    assert len(free) >= 2
    marginal = b * np.power(result.ratios + a, -b - 1) / base
    assert marginal[free] == pytest.approx([result.multiplier] * len(free), rel=1e-9)
    # A domain at its lower bound gains less per token than the shared multiplier.
    for i in set(range(3)) - set(free):
        assert result.active[i] == "lower" and marginal[i] < result.multiplier


def test_bounds_bind_and_are_reported():
    # Domain 0 is worth far more per token: it must sit at its upper bound.
    result = solve_ddo([0.0, 0.0], [3.0, 0.1], [1.0, 1.0], [0.2, 0.2], [1.5, 3.0])
    assert result.active[0] == "upper" and result.ratios[0] == pytest.approx(1.5)
    assert result.ratios.sum() == pytest.approx(2.0)


def test_fixed_domains_stay_put():
    result = solve_ddo([0.1, 0.1, 0.1], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [1.0, 3, 3])
    assert result.active[0] == "fixed" and result.ratios[0] == 1.0
    assert result.ratios[1:] == pytest.approx([1.0, 1.0])


def test_infeasible_budget_names_the_bounds():
    with pytest.raises(InfeasibleError, match="outside what the bounds allow"):
        solve_ddo([0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.5, 1.5], [3.0, 3.0])


def test_hundred_domains_hit_the_budget():
    rng = np.random.default_rng(3)
    m = 100
    base = rng.uniform(1, 10, m)
    result = solve_ddo(rng.uniform(0, 3, m), rng.uniform(0.1, 3, m), base, [0.2] * m, [3.0] * m)
    assert result.ratios @ base == pytest.approx(base.sum(), rel=1e-11)
    assert np.all((result.ratios >= 0.2) & (result.ratios <= 3.0))
