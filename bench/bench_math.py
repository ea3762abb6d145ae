"""Speed of the pure math: KKT DDO solve vs scipy SLSQP, and the response fit.

Prints figures measured in this run; asserts nothing. Run: python bench/bench_math.py
"""

import argparse
import time

import numpy as np
from scipy.optimize import minimize

from autoscale_ds.method.fit import fit_response
from autoscale_ds.method.solve import solve_ddo


def _problem(num_domains: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 3, num_domains), rng.uniform(0.1, 3, num_domains),
            rng.uniform(1e5, 1e7, num_domains), np.full(num_domains, 0.2), np.full(num_domains, 3.0))


def _slsqp(a, b, base, lo, hi):
    constraint = {"type": "eq", "fun": lambda x: x @ base - base.sum(), "jac": lambda x: base}
    return minimize(lambda x: np.sum((x + a) ** -b), np.ones(len(a)),
                    jac=lambda x: -b * (x + a) ** (-b - 1), method="SLSQP",
                    bounds=list(zip(lo, hi)), constraints=[constraint],
                    options={"ftol": 1e-12, "maxiter": 1000})


def _timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[7, 30, 100, 1000],
                        help="numbers of domains to solve for")
    args = parser.parse_args()
    print(f"{'domains':>8} {'KKT ms':>9} {'SLSQP ms':>9} {'speed-up':>9} {'objective gap':>14}")
    for num_domains in args.sizes:
        problem = _problem(num_domains, seed=num_domains)
        kkt_s, ours = _timed(lambda: solve_ddo(*problem), args.repeats)
        slsqp_s, ref = _timed(lambda: _slsqp(*problem), 1 if num_domains > 100 else args.repeats)
        print(f"{num_domains:>8} {kkt_s * 1e3:>9.2f} {slsqp_s * 1e3:>9.1f} {slsqp_s / kkt_s:>8.0f}x "
              f"{ours.objective - ref.fun:>14.2e}")
    x = np.array([0.2, 1.0, 3.0])
    fit_s, _ = _timed(lambda: fit_response("d", x, (x + 0.7) ** -0.9 + 0.1), 20)
    print(f"\nresponse fit (3 points): {fit_s * 1e3:.1f} ms per domain")


if __name__ == "__main__":
    main()
