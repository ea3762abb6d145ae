"""Runs files generated from a known separable loss, so DDO's answer is known exactly.

The objective of a run with ratios x (relative to the base quantities) is

    K * (1 + sum_i [(x_i + a_i)^(-b_i) - (1 + a_i)^(-b_i)])

so a run that changes only domain i has y(x) = (x + a_i)^(-b_i) + c_i with
c_i = 1 - (1 + a_i)^(-b_i): exactly DDO's model, with known parameters.
"""

from typing import Dict, List, Sequence

import numpy as np

from autoscale_ds.formats.schemas import RUNS_SCHEMA


def objective(x: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float = 20.0) -> float:
    return float(scale * (1.0 + np.sum(np.power(x + a, -b) - np.power(1.0 + a, -b))))


def make_runs(domains: Sequence[str], a, b, base_tokens, ratios=(0.2, 3.0),
              base_repeats: int = 1, noise: float = 0.0, seed: int = 0,
              metric: str = "perplexity") -> Dict:
    """A runs file dict: base run(s) plus each domain at each ratio."""
    a, b, base = (np.asarray(v, dtype=float) for v in (a, b, base_tokens))
    rng = np.random.default_rng(seed)
    runs: List[Dict] = []

    def add(run_id: str, x: np.ndarray):
        value = objective(x, a, b) * (1.0 + noise * rng.standard_normal())
        runs.append({"id": run_id, "train_tokens": dict(zip(domains, (base * x).tolist())),
                     "eval": {"held_out": value}, "status": "ok"})

    for k in range(base_repeats):
        add(f"base-seed{k}", np.ones(len(domains)))
    for i, domain in enumerate(domains):
        for r in ratios:
            x = np.ones(len(domains))
            x[i] = r
            add(f"{domain}-x{r:g}", x)
    return {"schema": RUNS_SCHEMA, "metric": metric, "runs": runs}
