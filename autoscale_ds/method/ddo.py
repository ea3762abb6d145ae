"""DDO at one budget: from a runs file to the optimal mixture.

The runs file only lists token counts, so the experiment design is recovered from them:
the *base* run is the token vector from which every other run differs in exactly one
domain; each other run is a perturbation ``x = N_i / B_i`` of that one domain. Repeated
runs with the base's token counts (e.g. several seeds) are replicates: they set the
normalisation and feed the noise estimate. All ok runs must have been measured on one eval set
(the ``eval_set.fingerprint`` our trainer writes in each row), else the objectives differ by
more than the mixture.
"""

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .fit import ResponseFit, fit_response
from ..formats.schemas import METRICS, Mixture, RunsFile, group_by_eval_set
from .solve import Solution, solve_ddo

logger = logging.getLogger(__name__)

BASE = -1  # point_domain value of a base-run replicate
MIN_PERTURBED_RATIOS = 2


@dataclass
class DDOOptions:
    """How to turn a runs file into a mixture. ``None`` means "as DESIGN.md defaults"."""

    metric: Optional[str] = None
    """"perplexity" or "loss"; default: the runs file's own metric (converted if needed)."""
    eval_weights: Optional[Dict[str, float]] = None
    """Weight of each eval domain in the objective; default: the plain mean."""
    min_ratio: Optional[float] = None
    """Lower bound on every x_i; default: the smallest ratio tried for that domain."""
    max_ratio: Optional[float] = None
    """Upper bound on every x_i; default: the largest ratio tried for that domain."""
    ratio_bounds: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    """Per-domain (lo, hi) overriding the above."""
    available_tokens: Dict[str, float] = field(default_factory=dict)
    """Tokens each domain has; with ``max_epochs`` caps the optimum's quantity."""
    max_epochs: float = 1.0
    """How many passes over a domain's available tokens are allowed."""
    base_run: Optional[str] = None
    """Id of the base run, when the token counts alone are ambiguous."""
    allow_incomplete: bool = False
    """Keep domains lacking perturbed runs at their base quantity instead of failing."""
    allow_mixed_eval: bool = False
    """Combine runs measured on different eval sets (warns; recorded in the provenance)."""
    token_tolerance: float = 0.0
    """A run whose tokens of a domain are within this many of the base run's counts as
    unchanged in it. WSD branches need one sample: a branch reads its parent's blended
    stream, whose every prefix is within one sample per domain of exact."""

    def __post_init__(self):
        problems = []
        if self.metric is not None and self.metric not in METRICS:
            problems.append(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        for name in ("min_ratio", "max_ratio"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                problems.append(f"{name} must be a positive number, got {value!r}")
        if self.min_ratio and self.max_ratio and self.min_ratio > self.max_ratio:
            problems.append(f"min_ratio {self.min_ratio} exceeds max_ratio {self.max_ratio}")
        for name in ("allow_incomplete", "allow_mixed_eval"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (self.max_epochs > 0):
            problems.append(f"max_epochs must be positive, got {self.max_epochs!r}")
        if not (isinstance(self.token_tolerance, (int, float)) and self.token_tolerance >= 0):
            problems.append(f"token_tolerance must be a number of tokens >= 0, got "
                            f"{self.token_tolerance!r}")
        for domain, (lo, hi) in self.ratio_bounds.items():
            if not (0 < lo <= hi):
                problems.append(f"ratio bounds of {domain!r} must satisfy 0 < lo <= hi, got ({lo}, {hi})")
        if self.eval_weights is not None:
            problems += eval_weight_problems(self.eval_weights)
        if problems:
            raise InputError("invalid DDO options: " + "; ".join(problems))


def eval_weight_problems(weights) -> List[str]:
    """What is wrong with objective weights per eval domain: each must be a finite number
    >= 0 and one must be > 0 (a negative weight rewards a worse loss; all zero is 0/0)."""
    if not isinstance(weights, dict):
        return [f"eval_weights must map eval domains to weights, got {weights!r}"]
    if not weights:
        return []  # no weights: the plain mean
    problems = []
    for domain, weight in weights.items():
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        if not (number and math.isfinite(weight) and weight >= 0):
            problems.append(f"eval weight of {domain!r} must be a finite number >= 0, "
                            f"got {weight!r}")
    if not problems and not any(weight > 0 for weight in weights.values()):
        problems.append(f"eval weights need at least one > 0, got {weights}")
    return problems


@dataclass
class Design:
    """The experiment recovered from a runs file, as flat arrays of points."""

    domains: List[str]
    base_tokens: np.ndarray
    point_domain: np.ndarray
    """Index of the perturbed domain per point, or BASE for a base replicate."""
    point_ratio: np.ndarray
    point_run: List[str]
    objectives: np.ndarray
    """Objective (mean eval metric) of each point's run."""
    failed_runs: List[str]
    replicate_groups: List[List[int]]
    """Point indices of runs sharing identical token counts (for the noise estimate)."""
    eval_set: Dict = field(default_factory=lambda: {"fingerprint": None, "mixed": False})
    """The eval set the ok runs were measured on, as recorded in the mixture's provenance."""
    point_seed: List[Optional[int]] = field(default_factory=list)
    """Training seed of each point's run (the row's ``seed``), None when not recorded."""
    use_pairing: bool = False
    """Each run is relative to the base run of its own seed (see :meth:`normalizers`)."""

    def normalizers(self, objectives: np.ndarray, paired: Optional[bool] = None) -> np.ndarray:
        """Per point, the base objective it is relative to: with pairing, the base run of
        the same seed; else (the default) the mean of all base runs.

        Every proxy of a sweep with one seed shares its initial weights and sample order, so
        if a seed's effect were common to its runs, dividing by the same seed's base would
        cancel it. Measured on small proxies it is not (a different mixture reorders the
        batches and the trajectories part), and one base run is noisier than the mean of
        several. So pairing is used only where the data show it helps (:func:`_pairing_helps`).
        """
        paired = self.use_pairing if paired is None else paired
        is_base = self.point_domain == BASE
        overall = float(np.mean(objectives[is_base]))
        if not paired:
            return np.full(len(objectives), overall)
        by_seed = {}
        for seed in {s for s in self.point_seed if s is not None}:
            mask = is_base & np.array([s == seed for s in self.point_seed])
            if mask.any():
                by_seed[seed] = float(np.mean(objectives[mask]))
        seeds = self.point_seed or [None] * len(objectives)
        return np.array([by_seed.get(seed, overall) for seed in seeds])

    @property
    def paired(self) -> bool:
        """True when every perturbed point has a base run of its own seed."""
        base_seeds = {s for s, d in zip(self.point_seed, self.point_domain) if d == BASE}
        perturbed = [s for s, d in zip(self.point_seed, self.point_domain) if d != BASE]
        return bool(perturbed) and all(s is not None and s in base_seeds for s in perturbed)

    @property
    def base_runs(self) -> List[str]:
        return [run for run, d in zip(self.point_run, self.point_domain) if d == BASE]

    def ratios_tried(self, index: int) -> np.ndarray:
        return np.unique(np.append(self.point_ratio[self.point_domain == index], 1.0))


@dataclass
class DDOResult:
    domains: List[str]
    base_tokens: np.ndarray
    fits: List[ResponseFit]
    lower: np.ndarray
    upper: np.ndarray
    solution: Solution
    pinned: Dict[str, str]
    """Domains held at their base quantity, with the reason."""

    @property
    def optimal_tokens(self) -> np.ndarray:
        return self.solution.ratios * self.base_tokens

    @property
    def weights(self) -> Dict[str, float]:
        tokens = self.optimal_tokens
        return {d: float(n / tokens.sum()) for d, n in zip(self.domains, tokens)}


# --------------------------------------------------------------------------- design


def build_design(runs_file: RunsFile, options: DDOOptions, source: str = "<runs>") -> Design:
    """Recover base run and single-domain perturbations; raise InputError when impossible."""
    ok_runs = [run for run in runs_file.runs if run.ok]
    failed = [run.id for run in runs_file.runs if not run.ok]
    if failed:
        logger.warning("ignoring %d failed run(s): %s", len(failed), ", ".join(failed))
    if not ok_runs:
        raise InputError(f"runs file {source}: no run has status 'ok'")
    eval_set = check_eval_sets(ok_runs, options.allow_mixed_eval, source)
    domains = list(ok_runs[0].train_tokens)
    vectors = [tuple(run.train_tokens[d] for d in domains) for run in ok_runs]
    base_vector = _find_base(ok_runs, vectors, options.base_run, source)
    if options.token_tolerance > 0:
        vectors = [_snapped(vector, base_vector, options.token_tolerance) for vector in vectors]
    base = np.asarray(base_vector, dtype=float)
    if np.any(base <= 0):
        zero = domains[int(np.argmin(base))]
        raise InputError(f"runs file {source}: the base run has no tokens of domain {zero!r}; "
                         "every domain needs a positive base quantity")
    objectives = np.array([_objective(run, runs_file.metric, options, source) for run in ok_runs])
    point_domain, point_ratio = _classify(ok_runs, vectors, base_vector, domains, source)
    groups = defaultdict(list)
    for index, vector in enumerate(vectors):
        groups[vector].append(index)
    design = Design(domains, base, point_domain, point_ratio, [r.id for r in ok_runs],
                    objectives, failed, [g for g in groups.values() if len(g) > 1], eval_set,
                    [_seed_of(run) for run in ok_runs])
    design.use_pairing = _pairing_helps(design)
    return design


def pooled_relative_spread(values: np.ndarray, groups: Sequence[Sequence[int]]) -> Tuple[float, int]:
    """(sum of squared relative deviations from each group's mean, degrees of freedom)."""
    squares, dof = 0.0, 0
    for group in groups:
        relative = values[group] / values[group].mean()
        squares += float(np.sum((relative - 1.0) ** 2))
        dof += len(group) - 1
    return squares, dof


def cross_seed_groups(design: Design) -> List[List[int]]:
    """Groups of perturbed runs with identical token counts trained with different seeds."""
    return [g for g in design.replicate_groups
            if design.point_domain[g[0]] != BASE and len({design.point_seed[i] for i in g}) > 1]


def _pairing_helps(design: Design) -> bool:
    """True when perturbed runs repeated over seeds agree better relative to their own
    seed's base run than relative to the mean of the base runs (their spread is smaller)."""
    groups = cross_seed_groups(design)
    if not (design.paired and groups):
        return False
    paired, unpaired = (pooled_relative_spread(
        design.objectives / design.normalizers(design.objectives, pairing), groups)[0]
        for pairing in (True, False))
    return paired < unpaired


def _seed_of(run) -> Optional[int]:
    seed = run.extra.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def check_eval_sets(ok_runs, allow_mixed: bool, source: str = "<runs>") -> dict:
    """The eval set shared by ``ok_runs`` (provenance record); InputError when they differ.

    Objectives measured on different eval sets differ by the eval sampling error as well as
    by the mixture, which can exceed a perturbation's effect. Rows without a record count as
    one more eval set, unless no row has one (hand-written runs files).
    """
    groups = group_by_eval_set((run.id, run.eval_fingerprint) for run in ok_runs)
    if len(groups) == 1:
        return _single_eval_set(ok_runs[0])
    summary = "; ".join(f"{_some_ids(ids)} on {short_fingerprint(fp)}" for fp, ids in groups.items())
    if not allow_mixed:
        raise InputError(f"runs file {source}: runs measured on different eval sets: {summary}; "
                         "rerun them on one eval set or pass --allow-mixed-eval "
                         "(sweep/pipeline config: ddo: {allow_mixed_eval: true})")
    logger.warning("combining runs measured on different eval sets (allowed): %s; their "
                   "objectives also differ by the eval sampling error", summary)
    return {"fingerprint": None, "mixed": True,
            "groups": [{"fingerprint": fp, "runs": ids} for fp, ids in groups.items()]}


def _single_eval_set(run) -> dict:
    if run.eval_fingerprint is None:
        return {"fingerprint": None, "mixed": False}
    record = {"fingerprint": run.eval_fingerprint, "mixed": False}
    tokens = run.extra["eval_set"].get("tokens")
    if isinstance(tokens, dict):
        record["tokens"] = dict(tokens)
    return record


def _some_ids(ids: List[str], shown: int = 6) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def short_fingerprint(fingerprint: Optional[str]) -> str:
    """First 12 hex digits, enough to tell eval sets apart in a message."""
    if fingerprint is None:
        return "no recorded eval set"
    return fingerprint[:12] + ("..." if len(fingerprint) > 12 else "")


def _find_base(runs, vectors, base_run_id, source):
    if base_run_id is not None:
        for run, vector in zip(runs, vectors):
            if run.id == base_run_id:
                return vector
        raise InputError(f"runs file {source}: base run {base_run_id!r} not found among ok runs")
    distinct = list(dict.fromkeys(vectors))
    if len(distinct) == 1:
        raise InputError(f"runs file {source}: all runs have the same token counts; "
                         "DDO needs perturbed runs")
    neighbours = Counter()
    for candidate in distinct:
        neighbours[candidate] = sum(_num_changed(candidate, other) == 1 for other in distinct)
    ranked = neighbours.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        ids = [runs[vectors.index(v)].id for v, _ in ranked[:2]]
        raise InputError(f"runs file {source}: cannot tell the base run from the token counts "
                         f"(runs {ids[0]!r} and {ids[1]!r} fit equally); pass --base-run ID")
    return ranked[0][0]


def _snapped(vector: Sequence[float], base: Sequence[float], tolerance: float) -> tuple:
    """``vector`` with each count within ``tolerance`` tokens of the base's set to the base's."""
    return tuple(b if abs(x - b) <= tolerance else x for x, b in zip(vector, base))


def _num_changed(a: Sequence[float], b: Sequence[float]) -> int:
    return sum(x != y for x, y in zip(a, b))


def _classify(runs, vectors, base_vector, domains, source):
    point_domain, point_ratio = [], []
    base_id = runs[vectors.index(base_vector)].id
    for run, vector in zip(runs, vectors):
        changed = [i for i in range(len(domains)) if vector[i] != base_vector[i]]
        if len(changed) > 1:
            names = ", ".join(repr(domains[i]) for i in changed)
            raise InputError(f"runs file {source}: run {run.id!r} changes {len(changed)} domains "
                             f"at once ({names}) relative to base run {base_id!r}; DDO needs "
                             "runs that change one domain each")
        if not changed:
            point_domain.append(BASE)
            point_ratio.append(1.0)
            continue
        index = changed[0]
        ratio = vector[index] / base_vector[index]
        if ratio <= 0:
            raise InputError(f"runs file {source}: run {run.id!r} removes domain "
                             f"{domains[index]!r} entirely; the power law needs a ratio > 0")
        point_domain.append(index)
        point_ratio.append(ratio)
    return np.array(point_domain), np.array(point_ratio, dtype=float)


def _objective(run, file_metric: str, options: DDOOptions, source: str) -> float:
    values = {d: _convert(v, file_metric, options.metric or file_metric) for d, v in run.eval.items()}
    if not options.eval_weights:
        return float(np.mean(list(values.values())))
    unknown = [d for d in options.eval_weights if d not in values]
    if unknown:
        raise InputError(f"eval weight for {unknown[0]!r}, but run {run.id!r} in {source} only "
                         f"evaluates {sorted(values)}")
    total = sum(options.eval_weights.values())
    return float(sum(w * values[d] for d, w in options.eval_weights.items()) / total)


def _convert(value: float, source_metric: str, target_metric: str) -> float:
    if source_metric == target_metric:
        return value
    return math.exp(value) if target_metric == "perplexity" else math.log(value)


# ---------------------------------------------------------------------------- solve


def solve_design(design: Design, options: DDOOptions, objectives: Optional[np.ndarray] = None,
                 warn: bool = True) -> DDOResult:
    """Fit each domain's response and solve for the optimum (``objectives`` may be noisy)."""
    objectives = design.objectives if objectives is None else objectives
    y = objectives / design.normalizers(objectives)
    fits, pinned = [], {}
    for index, domain in enumerate(design.domains):
        fit, why_pinned = _fit_domain(design, index, y, options, warn)
        fits.append(fit)
        if why_pinned:
            pinned[domain] = why_pinned
    lower, upper = _bounds(design, fits, pinned, options)
    solution = solve_ddo([f.a for f in fits], [f.b for f in fits], design.base_tokens, lower, upper)
    return DDOResult(design.domains, design.base_tokens, fits, lower, upper, solution, pinned)


def _fit_domain(design: Design, index: int, y: np.ndarray, options: DDOOptions, warn: bool):
    domain = design.domains[index]
    mask = (design.point_domain == index) | (design.point_domain == BASE)
    perturbed = np.unique(design.point_ratio[design.point_domain == index])
    if len(perturbed) < MIN_PERTURBED_RATIOS:
        message = (f"domain {domain!r} has {len(perturbed)} perturbed ratio(s) with an ok run; "
                   f"DDO needs at least {MIN_PERTURBED_RATIOS}")
        if not options.allow_incomplete:
            raise InputError(message + " (rerun the missing/failed runs or pass --allow-incomplete)")
        if warn:
            logger.warning("%s; keeping it at its base quantity", message)
        flat = ResponseFit(domain, 0.0, 0.0, 0.0, int(mask.sum()), math.nan, False, True, message)
        return flat, "too few perturbed runs"
    fit = fit_response(domain, design.point_ratio[mask], y[mask], warn=warn)
    return fit, ("flat response: " + fit.reason) if fit.flat else ""


def _bounds(design: Design, fits, pinned, options: DDOOptions):
    lower, upper = [], []
    for index, domain in enumerate(design.domains):
        tried = design.ratios_tried(index)
        lo = options.min_ratio if options.min_ratio is not None else float(tried.min())
        hi = options.max_ratio if options.max_ratio is not None else float(tried.max())
        lo, hi = options.ratio_bounds.get(domain, (lo, hi))
        if domain in pinned:
            lo = hi = 1.0
        hi = min(hi, _epoch_cap_ratio(design, index, options))
        if hi < lo:
            raise InputError(_cap_message(design, index, lo, options))
        lower.append(lo)
        upper.append(hi)
    return np.array(lower), np.array(upper)


def _epoch_cap_ratio(design: Design, index: int, options: DDOOptions) -> float:
    available = options.available_tokens.get(design.domains[index])
    if available is None:
        return math.inf
    return available * options.max_epochs / design.base_tokens[index]


def _cap_message(design: Design, index: int, lo: float, options: DDOOptions) -> str:
    domain = design.domains[index]
    needed = lo * design.base_tokens[index]
    have = options.available_tokens[domain] * options.max_epochs
    return (f"domain {domain!r} needs at least {needed:,.0f} tokens (ratio {lo:g} of its base) "
            f"but only {have:,.0f} are available with max_epochs={options.max_epochs:g}; "
            "raise max_epochs or lower its minimum ratio")


# --------------------------------------------------------------------------- output


def integer_tokens(tokens: Sequence[float], total: Optional[int] = None) -> List[int]:
    """Whole tokens in proportion to ``tokens`` summing exactly to ``total`` (default: the
    rounded sum): largest remainders get the +1s. Exact rational arithmetic on Python ints,
    so any size works (int64 wraps past 9.2e18; float sums drift past 2^53)."""
    quantities = [Fraction(float(n)) for n in tokens]
    quantity_sum = sum(quantities, Fraction(0))
    target = round(quantity_sum) if total is None else int(total)
    if quantity_sum <= 0:
        raise InputError("whole tokens need a positive total quantity")
    quotas = [n * target / quantity_sum for n in quantities]
    floors = [math.floor(q) for q in quotas]
    shortfall = target - sum(floors)  # 0 <= shortfall < number of domains
    order = sorted(range(len(quotas)), key=lambda i: floors[i] - quotas[i])  # stable: ties by index
    for i in order[:shortfall]:
        floors[i] += 1
    return floors


def result_to_mixture(result: DDOResult, provenance: dict) -> Mixture:
    tokens = result.optimal_tokens
    rounded = integer_tokens(tokens)
    mixture = Mixture(
        total_tokens=int(sum(rounded)),
        weights={d: float(n / tokens.sum()) for d, n in zip(result.domains, tokens)},
        tokens=dict(zip(result.domains, rounded)),
        method="ddo",
        provenance=dict(provenance),
    )
    mixture.provenance.update(_result_provenance(result))
    return mixture


def _result_provenance(result: DDOResult) -> dict:
    solution = result.solution
    return {
        "base_tokens": {d: float(n) for d, n in zip(result.domains, result.base_tokens)},
        "ratios": {d: float(x) for d, x in zip(result.domains, solution.ratios)},
        "bounds": {d: [float(lo), float(hi)] for d, lo, hi in
                   zip(result.domains, result.lower, result.upper)},
        "active_bounds": {d: act for d, act in zip(result.domains, solution.active)},
        "fits": {fit.domain: fit.to_dict() for fit in result.fits},
        "pinned": dict(result.pinned),
        "predicted_relative_objective": solution.objective,
        "multiplier": solution.multiplier if math.isfinite(solution.multiplier) else None,
    }


def run_ddo(runs_file: RunsFile, options: DDOOptions, source: str = "<runs>") -> DDOResult:
    design = build_design(runs_file, options, source)
    return solve_design(design, options)
