"""How noisy is one measurement at a proxy budget? Three figures, before trusting any mixture.

At one budget of a pipeline config (default: examples/demo_pipeline.yaml on the built-in
corpus, at its smallest budget):

  (a) seed spread       the base mixture (the config's base_weights, uniform by default)
                        trained over --seeds: mean, sample std and relative std of its
                        objective (final average validation perplexity);
  (b) eval sampling     from the same runs, the objective on the eval set's two disjoint
                        halves (relative difference, mean and max over runs) and its ratio
                        to (a): well under 1 means the eval set is large enough;
  (c) DDO reproducibility  the full DDO sweep at the budget, once with each of the first two
                        seeds (every run of a sweep uses its seed), and the largest
                        difference between the two optimal weights, domain by domain;

and the share of a proxy run's wall time spent evaluating. Figures (b) and the eval cost need
runs that record ``eval_halves`` / ``eval_seconds``; older runs show them as not recorded.

    python bench/noise.py                        # the demo's smallest budget, seeds 0 1 2
    python bench/noise.py --quick                # 4 domains at 40K tokens: a fast check
    python bench/noise.py --config AUTOSCALE.yaml --budget 1e6 --seeds 0 1 2 3

Each seed's sweep lives under --out/seed<S> (the base run of seed S is the first run of that
sweep; seeds past the first two train only their base run) and is reused on a rerun, so an
interrupted measurement continues. It prints the tables and writes noise.json; relative
figures in the file are fractions (0.05 = 5 %). Nothing is asserted.
"""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the sibling benchmark: its config helpers and tables)

logger = logging.getLogger("noise")

DEFAULT_SEEDS = [0, 1, 2]
QUICK_BUDGET_FRACTION = 0.25  # --quick with --config: a quarter of its smallest budget


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pipeline config (YAML); default: the demo's on the built-in corpus")
    parser.add_argument("--budget", type=float,
                        help="tokens per proxy run (default: the config's smallest budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help="seeds of the base mixture (a); the first two also run a DDO sweep (c)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: the demo's quick setup (4 domains, 40K tokens), or a "
                             "quarter of --config's smallest budget")
    parser.add_argument("--out", default="bench_results/noise", help="runs and noise.json")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds needs two or more distinct seeds (a spread and two DDO sweeps), "
                     f"got {args.seeds}")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of tokens, got {args.budget:g}")
    return args


def budget_tokens(args, config) -> float:
    if args.budget is not None:
        return args.budget
    smallest = min(config.budgets)
    # Without --config, --quick already cut the demo down (quality.QUICK_OVERRIDES).
    return smallest * QUICK_BUDGET_FRACTION if args.quick and args.config else smallest


# ---------------------------------------------------------------- runs (reused when finished)

def seed_sweep(config, budget: float, seed: int, out: Path):
    """The pipeline's sweep at ``budget`` with every run on ``seed``, kept under out/seed<S>.
    The weight intervals are off: (c) measures the spread of the optimum directly."""
    return dataclasses.replace(config.sweep(budget), seeds=[seed], output_dir=str(out / f"seed{seed}"),
                               ddo=dict(config.ddo, sensitivity_draws=0))


def base_rows(sweeps: Dict[int, object]) -> Dict[int, dict]:
    """The result row of each sweep's base run, the missing ones trained now in one batch on
    the executor (two local workers run two seeds side by side)."""
    from contextlib import ExitStack

    from autoscale_ds.orchestrate.executors import existing_result, make_executor
    from autoscale_ds.lock import DirectoryLock
    from autoscale_ds.orchestrate.sweep import plan_sweep

    runs = {seed: plan_sweep(sweep)[0] for seed, sweep in sweeps.items()}  # base runs come first
    missing = [run for run in runs.values() if existing_result(run) is None]
    if missing:
        logger.info("training the base mixture for %d seed(s) (%s tokens each)", len(missing),
                    f"{sum(missing[0].config.tokens_per_domain.values()):,.0f}")
        with ExitStack() as locks:
            for sweep in sweeps.values():
                locks.enter_context(DirectoryLock(sweep.output_dir))
            make_executor(next(iter(sweeps.values())).executor).execute(missing, lambda *_: None)
    rows = {seed: existing_result(run) for seed, run in runs.items()}
    for seed, row in rows.items():
        if row is None or row.get("status") != "ok":
            raise SystemExit(f"noise: base run {runs[seed].output_dir} failed: "
                             f"{(row or {}).get('reason', 'no result')}")
    return rows


def sweep_rows(sweep) -> Dict[str, dict]:
    """Every finished run of a sweep, by its directory (for the eval-set check and timings)."""
    from autoscale_ds.orchestrate.executors import existing_result
    from autoscale_ds.orchestrate.sweep import plan_sweep

    rows = {}
    for run in plan_sweep(sweep):
        row = existing_result(run)
        if row is not None and row.get("status") == "ok":
            rows[str(run.output_dir)] = row
    return rows


def run_all(config, budget: float, seeds: List[int], out: Path):
    """(base rows by seed, DDO weights by seed, every run's row by directory)."""
    from autoscale_ds.method.noise_aware import unshrunk
    from autoscale_ds.orchestrate.runner import run_sweep

    sweeps = {seed: seed_sweep(config, budget, seed, out) for seed in seeds}
    base = base_rows(sweeps)  # (a) first: the cheap part
    ddo = {}
    for seed in seeds[:2]:  # (c): the sweep resumes from its base run trained above
        logger.info("DDO sweep with seed %d at %s tokens", seed, f"{budget:,.0f}")
        # The DDO optimum itself (with ddo.noise_sigma set, the sweep would also shrink it).
        ddo[seed] = dict(unshrunk(run_sweep(sweeps[seed]).mixture).weights)
    rows = {}
    for sweep in sweeps.values():
        rows.update(sweep_rows(sweep))
    return base, ddo, rows


# ---------------------------------------------------------------- figures (no training below)

def noise_figures(base: Dict[int, dict], ddo: Dict[int, Dict[str, float]], rows: Dict[str, dict]) -> dict:
    """The payload of noise.json from the runs' rows; InputError when the runs were measured
    on different eval sets (their figures would mix two sources of noise)."""
    from curves import eval_time_share, halves_summary, shared_eval_fingerprint

    eval_set = _eval_set(rows, shared_eval_fingerprint(rows))
    spread = seed_spread_figures(base)
    halves = halves_summary(list(base.values()))
    if halves is not None and spread["relative_std"]:
        halves["ratio_to_seed_spread"] = halves["mean"] / spread["relative_std"]
    return {"seeds": list(base), "eval_set": eval_set, "seed_spread": spread, "eval_halves": halves,
            "ddo": ddo_figures(ddo), "eval_time_share": eval_time_share(list(rows.values())),
            "runs": len(rows)}


def seed_spread_figures(base: Dict[int, dict]) -> dict:
    """(a): the base mixture's objective per seed, its mean, sample std and relative std."""
    from curves import row_objective, seed_spread

    objectives = {seed: row_objective(row) for seed, row in base.items()}
    spread = seed_spread(list(objectives.values()))
    return {"objective_per_seed": {str(s): v for s, v in objectives.items()}, "mean": spread.mean,
            "std": spread.std, "relative_std": spread.relative_std}


def ddo_figures(ddo: Dict[int, Dict[str, float]]) -> dict:
    """(c): the two seeds' DDO weights and their largest difference."""
    from curves import max_weight_difference

    first, second = list(ddo)[:2]
    difference, domain = max_weight_difference(ddo[first], ddo[second])
    return {"seeds": [first, second], "weights": {str(s): ddo[s] for s in (first, second)},
            "max_abs_weight_difference": difference, "domain": domain}


def _eval_set(rows: Dict[str, dict], fingerprint: Optional[str]) -> Optional[dict]:
    if fingerprint is None:
        logger.warning("the runs record no eval-set fingerprint (trained by an older version)")
        return None
    return {"fingerprint": fingerprint, "tokens": next(iter(rows.values()))["eval_set"].get("tokens")}


# ---------------------------------------------------------------- tables (from noise.json)

def print_report(figures: dict) -> None:
    """The tables of noise.json; the summary comes last (bench/run_all.py shows the tail)."""
    from autoscale_ds.tables import human_tokens

    budget = human_tokens(figures["budget_tokens"])
    spread = figures["seed_spread"]
    print(f"\n(a) Seed spread of the base mixture at {budget} tokens "
          f"(objective: final average validation perplexity)")
    print(quality.markdown_table(["seed", "objective"],
                                 [[s, f"{v:.2f}"] for s, v in spread["objective_per_seed"].items()]))
    print(f"\n(c) DDO at {budget} tokens, one complete sweep per seed")
    print(_ddo_table(figures["ddo"], figures["base_weights"]))
    print(f"\nNoise at {budget} tokens per proxy run (seeds "
          f"{' '.join(str(s) for s in figures['seeds'])}; {figures['runs']} runs)")
    print(quality.markdown_table(["figure", "value"], _summary_rows(figures)))


def _ddo_table(ddo: dict, base_weights: Dict[str, float]) -> str:
    first, second = (ddo["weights"][str(s)] for s in ddo["seeds"])
    return quality.markdown_table(
        ["domain", "base", *(f"DDO seed {s}" for s in ddo["seeds"]), "difference"],
        [[d, f"{base_weights[d]:.3f}", f"{first[d]:.3f}", f"{second[d]:.3f}",
          f"{first[d] - second[d]:+.3f}"] for d in first])


def _summary_rows(figures: dict) -> List[List[str]]:
    pct = quality.percent
    spread, halves, cost = figures["seed_spread"], figures["eval_halves"], figures["eval_time_share"]
    std = "n/a" if spread["std"] is None else f"{spread['std']:.2f}"
    rows = [["(a) objective over seeds: mean ± sample std", f"{spread['mean']:.2f} ± {std}"],
            ["(a) seed spread (relative std)", pct(spread["relative_std"], 2)]]
    if halves is None:
        rows.append(["(b) eval sampling (disjoint halves)", "not recorded by these runs"])
    else:
        rows.append(["(b) eval sampling: halves differ by (mean / max)",
                     f"{pct(halves['mean'], 2)} / {pct(halves['max'], 2)}"])
        ratio = halves.get("ratio_to_seed_spread")
        rows.append(["(b) / (a)", "n/a" if ratio is None else f"{ratio:.2f}"])
    ddo = figures["ddo"]
    rows.append(["(c) DDO largest weight difference, 2 seeds",
                 f"{ddo['max_abs_weight_difference']:.3f} ({ddo['domain']})"])
    rows.append(["eval share of a proxy run's wall time",
                 "not recorded by these runs" if cost is None
                 else f"{pct(cost['mean'])} (mean of {cost['runs']} runs)"])
    eval_set = figures["eval_set"]
    rows.append(["eval set (fingerprint, tokens)", "not recorded" if eval_set is None else
                 f"{eval_set['fingerprint'][:12]}, {sum((eval_set.get('tokens') or {}).values()):,}"])
    return rows


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    out = Path(args.out)
    config = quality.pipeline_config(args, out)
    budget = budget_tokens(args, config)
    from autoscale_ds.atomic import atomic_write_json
    from autoscale_ds.errors import InputError
    from autoscale_ds.orchestrate.sweep import base_tokens

    try:
        base, ddo, rows = run_all(config, budget, args.seeds, out)
        figures = noise_figures(base, ddo, rows)
    except InputError as exc:  # a bad budget, runs measured on different eval sets
        raise SystemExit(f"noise: {exc}") from None
    planned = base_tokens(seed_sweep(config, budget, args.seeds[0], out))
    base_weights = {d: n / sum(planned.values()) for d, n in planned.items()}
    figures = {"budget_tokens": budget, "base_weights": base_weights, **figures}
    print_report(figures)
    atomic_write_json(out / "noise.json", figures)
    print(f"\nresults: {out / 'noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
