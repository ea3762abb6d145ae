"""``autoscale pipeline``: DDO at two or more budgets -> AutoScale prediction at the target
-> exports -> a Markdown report with plots.

Every step reuses what is already on disk: each budget's sweep skips finished runs, so an
interrupted pipeline is resumed by running the same command again. Every setting is checked,
and every object a later stage needs is built, before the first proxy run; the mixture,
exports, plots and report are published as one set (:mod:`.outputs`).
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..atomic import atomic_write_text
from ..errors import InputError
from ..formats.schemas import save_mixture
from ..tables import human_tokens
from ..yaml_config import load_yaml_config
from .outputs import REPORT_FILE, publish, staging_dir
from .interrupts import sigterm_as_interrupt
from .runner import (StartedSweep, SweepResult, check_sweep, finish_sweep,
                     lock_output_dir, start_sweep)
from .settings import (ConfigProblems, Problems, export_section, guard_problems, is_number,
                       output_dir_problem, predict_section, quiet, token_count)
from ..train.config import TrainConfig
from .sweep import ProxyRun, SweepConfig, base_run_id, check_common_settings
from .wsd import PROXY_SCHEDULES, link_wsd_family

logger = logging.getLogger(__name__)

BACKTEST_FILE = "backtest.json"
SUMMARY_FILE = "summary.json"
SUMMARY_SCHEMA = "autoscale.pipeline_summary/v1"
DEFAULT_SEEDS = (0, 1)  # two base runs per budget: the least that estimates the noise


@dataclass
class PipelineConfig:
    manifest: str
    output_dir: str
    budgets: List[float]
    """Total tokens of the base run at each proxy budget (two or more)."""
    target_tokens: Optional[float] = None
    """Budget of the large run to predict for (or give `steps`)."""
    steps: Optional[float] = None
    domains: Optional[List[str]] = None
    base_weights: Any = "uniform"
    ratios: Optional[List[float]] = None
    seeds: Optional[List[int]] = None
    """Seeds of the base run at every budget (perturbed runs use the first). Default
    ``[0, 1]``: the base run's spread over seeds is the noise level of the sensitivity report
    (per-weight intervals, moves within noise). A single seed is honoured, with a warning, but
    then the noise is unknown unless ``ddo: {noise_sigma: S}`` gives it."""
    replicate_perturbed: bool = False
    """Run every perturbed run with each seed too (see SweepConfig.replicate_perturbed)."""
    train: Dict[str, Any] = field(default_factory=dict)
    executor: Dict[str, Any] = field(default_factory=lambda: {"kind": "local", "workers": 1})
    ddo: Dict[str, Any] = field(default_factory=dict)
    """autoscale ddo options, plus noise_sigma, sensitivity_draws and noise_aware (default
    true: each DDO move is shrunk toward the base by its signal-to-noise ratio)."""
    predict: Dict[str, Any] = field(default_factory=dict)
    """Guards: floor ({domain or "*": weight}), max_change_per_doubling, ceiling, max_epochs,
    hold_unmeasured; and noise_aware (default true: each extrapolated change is shrunk toward
    the largest budget's weight by the signal-to-noise ratio of its trend)."""
    export: Dict[str, Any] = field(default_factory=lambda: {"formats": ["megatron", "gpt-neox", "hf"]})
    """formats (list) and data_paths (a paths map file; default: the manifest's own stores)."""
    proxy_schedule: str = "cosine"
    """cosine: every proxy run trains from scratch with its own cosine schedule. wsd: each
    mixture is trained once, to the largest budget, with a warmup-stable-decay schedule, and
    every smaller budget is a decay branch off its stable phase (``train: {decay_fraction,
    decay_shape}`` shape the decay)."""

    origin = "pipeline config"  # not a setting: what error messages call this config (its file)

    def __post_init__(self):
        if self.seeds is None:
            self.seeds = list(DEFAULT_SEEDS)
        problems = Problems()
        check_common_settings(self, problems)
        self._check_budgets_and_target(problems)
        problems.attempt(None, predict_section, self.predict)
        problems.attempt(None, export_section, self.export)
        self._check_proxy_schedule(problems)
        if isinstance(self.predict, dict) and self.predict.get("max_epochs") is not None \
                and self.target_tokens is None:
            problems.add("predict.max_epochs", "needs target_tokens (with `steps` the target "
                         "total is not known before the prediction)")
        problems.raise_if_any(self.origin)
        if len(self.seeds) == 1 and not self._noise_given():
            logger.warning("seeds: %s runs each budget's base run once, so the noise cannot be "
                           "estimated and no weight intervals are made; use seeds: [0, 1] (the "
                           "default) or set ddo: {noise_sigma: S}", self.seeds)

    def _check_budgets_and_target(self, problems: Problems) -> None:
        """Budgets and the target as numbers (``10M`` is read as 1e7)."""
        budgets = None
        if isinstance(self.budgets, list):
            budgets = [token_count(problems, f"budgets[{i}]", b) for i, b in enumerate(self.budgets)]
        if budgets is not None and None not in budgets:
            self.budgets = budgets
        folders = [human_tokens(b) for b in budgets] if budgets and None not in budgets else []
        if budgets is None or len(budgets) < 2 or len(set(folders)) < len(folders):
            # Each budget's sweep has a folder named by its rounded size: they must differ.
            problems.add("budgets", f"must list two or more proxy budgets of distinct sizes like "
                         f"[500K, 1.5M], got {self.budgets!r}")
        if (self.target_tokens is None) == (self.steps is None):
            problems.add("target_tokens", "give exactly one of target_tokens or steps")
        if self.target_tokens is not None:
            target = token_count(problems, "target_tokens", self.target_tokens)
            self.target_tokens = target if target is not None else self.target_tokens
            numbers = [b for b in self.budgets if is_number(b)] if isinstance(self.budgets, list) else []
            if target is not None and numbers and target <= max(numbers):
                problems.add("target_tokens", f"{target:,.0f} is not above the largest proxy budget "
                             f"({max(numbers):,.0f}); the pipeline predicts for a larger budget")
        if self.steps is not None and not (is_number(self.steps) and self.steps >= 0):
            problems.add("steps", f"must be a number >= 0, got {self.steps!r}")

    def _check_proxy_schedule(self, problems: Problems) -> None:
        if self.proxy_schedule not in PROXY_SCHEDULES:
            problems.add("proxy_schedule", f"must be one of {', '.join(PROXY_SCHEDULES)}, got "
                         f"{self.proxy_schedule!r}")
        if isinstance(self.train, dict) and "lr_schedule" in self.train:
            problems.add("train.lr_schedule", "is set by the pipeline's proxy_schedule (wsd or "
                         "cosine); remove it and set proxy_schedule")

    def _ddo_settings(self) -> Dict[str, Any]:
        """The sweeps' ``ddo:`` settings. WSD branches read their parent's stream, whose
        prefix is within one sample per domain of the planned counts: DDO takes a domain
        within one sample of the base run's as unchanged, the base run named by its id."""
        if self.proxy_schedule != "wsd" or not isinstance(self.ddo, dict):
            return self.ddo
        seq_len = self.train.get("seq_len", TrainConfig.seq_len) if isinstance(self.train, dict) else None
        seeds = self.seeds if isinstance(self.seeds, list) and self.seeds else [0]
        return {"token_tolerance": seq_len, "base_run": base_run_id(seeds[0]), **self.ddo}

    def _noise_given(self) -> bool:
        return isinstance(self.ddo, dict) and self.ddo.get("noise_sigma") is not None

    def sweep(self, budget: float) -> SweepConfig:
        sweep = SweepConfig(manifest=self.manifest, output_dir=str(Path(self.output_dir) / f"ddo_{human_tokens(budget)}"),
                            budget_tokens=budget, domains=self.domains, base_weights=self.base_weights,
                            ratios=self.ratios, seeds=self.seeds,
                            replicate_perturbed=self.replicate_perturbed, train=self.train,
                            executor=self.executor, ddo=self._ddo_settings())
        sweep.origin = self.origin
        return sweep


def load_pipeline_config(path, overrides: Optional[dict] = None) -> PipelineConfig:
    origin = f"pipeline config {path}"
    try:
        config = load_yaml_config(path, PipelineConfig, "pipeline config", overrides,
                                  required=("manifest", "output_dir", "budgets"))
    except ConfigProblems as exc:
        raise exc.named(origin) from None
    config.origin = origin
    return config


@dataclass
class CheckedPipeline:
    """What a pipeline's settings build, made before its first proxy run."""

    guards: Any
    """PredictGuards, max_epochs ceilings included."""
    data_paths: Any
    formats: List[str]
    plans: Dict[float, List[ProxyRun]] = field(default_factory=dict)
    """Each budget's proxy runs; under proxy_schedule wsd linked into families."""


def check_pipeline(config: PipelineConfig) -> CheckedPipeline:
    """Build every object the pipeline's stages need (each budget's planned runs, DDO
    options and executor, the prediction guards, the exports) and raise every problem found
    at once, before the first proxy run: a wrong setting must not cost the training."""
    from ..formats.manifest import load_manifest

    problems = Problems()
    in_the_way = output_dir_problem(config.output_dir)
    if in_the_way:
        problems.add("output_dir", in_the_way)
    plans = {}
    for budget in sorted(config.budgets):
        checked = problems.attempt(None, check_sweep, config.sweep(budget), check_output=not in_the_way)
        if checked is not None:
            plans[budget] = checked.runs
    if config.proxy_schedule == "wsd" and len(plans) == len(config.budgets):
        problems.attempt("proxy_schedule", link_wsd_family, plans)
    manifest = problems.attempt(None, load_manifest, config.manifest)
    guards = paths = None
    if manifest is not None:
        domains = mixture_domains(config, manifest)
        if all(d in manifest.domains for d in domains):
            guards = problems.attempt(None, _guards, config, manifest, domains)
            paths = problems.attempt(None, _check_exports, config, domains)
    problems.raise_if_any(config.origin)
    return CheckedPipeline(guards, paths, export_section(config.export)["formats"], plans)


def _guards(config: PipelineConfig, manifest, domains: List[str]):
    from ..method.predict import PredictGuards

    named = predict_section(config.predict)
    problems = Problems()
    for name in ("floor", "ceiling"):
        for domain in named.get(name, {}):
            if domain != "*" and domain not in domains:
                problems.add(f"predict.{name}.{domain}", f"not a domain of this pipeline; domains: "
                             f"{', '.join(domains)}")
    guards = problems.attempt("predict", lambda: PredictGuards(**guard_settings(config, manifest)))
    if guards is not None:
        problems.items += guard_problems(guards, domains)
    problems.raise_if_any(config.origin)
    return guards


def _check_exports(config: PipelineConfig, domains: List[str]):
    """The paths map, after rendering every export format once with placeholder weights:
    a domain missing from the map or a format that cannot carry it shows up now."""
    from ..formats.export import export_mixture, load_data_paths

    spec = export_section(config.export)
    problems = Problems()
    paths = problems.attempt("export.data_paths", load_data_paths, spec["data_paths"] or config.manifest)
    if paths is not None:
        uniform = {d: 1.0 / len(domains) for d in domains}
        with quiet("autoscale_ds.formats.export"):
            for fmt in spec["formats"]:
                problems.attempt(f"export.formats.{fmt}", export_mixture, uniform, paths, fmt)
    problems.raise_if_any(config.origin)
    return paths


@dataclass
class PipelineResult:
    sweeps: list
    prediction: Any
    mixture_path: Path
    report_path: Path
    exports: Dict[str, Path]
    backtest: Optional[dict] = None
    """The ``autoscale.backtest/v1`` record (three or more budgets), also in backtest.json."""


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    """Check everything, run the sweeps, then predict and publish the outputs as one set:
    a run that fails after the sweeps leaves the previous outputs as they were."""
    checked = check_pipeline(config)
    out = Path(config.output_dir)
    with _locked(out):
        results = _run_sweeps(config, checked)
        sweeps = [results[budget] for budget in sorted(config.budgets)]
        logger.info("predicting the mixture at the target budget, writing exports and the report")
        prediction, mixture = _predict(config, sweeps, checked.guards)
        backtest = _backtest(config, sweeps, checked.guards)
        mixture_path, exports, report_path = _write_outputs(config, checked, out, sweeps,
                                                            prediction, mixture, backtest)
    return PipelineResult(sweeps, prediction, mixture_path, report_path, exports, backtest)


def _run_sweeps(config: PipelineConfig, checked: CheckedPipeline) -> Dict[float, SweepResult]:
    """Every budget's sweep. WSD: the largest budget first, its runs are the parents the
    others branch from. An executor that queues its runs (SLURM) gets every sweep submitted
    before the first wait, so each WSD branch waits for its own parent's job only; the
    others train one sweep after the other."""
    order = sorted(config.budgets, reverse=config.proxy_schedule == "wsd")
    results: Dict[float, SweepResult] = {}
    queued: List[Tuple[float, StartedSweep]] = []
    try:
        with sigterm_as_interrupt():
            for index, budget in enumerate(order, start=1):
                logger.info("DDO sweep %d of %d: %s tokens per base run (%s)", index, len(order),
                            human_tokens(budget), config.proxy_schedule)
                started = start_sweep(config.sweep(budget), runs=checked.plans[budget])
                if started.submission is None:
                    results[budget] = finish_sweep(started)
                else:
                    queued.append((budget, started))
            while queued:
                budget, started = queued[0]
                results[budget] = finish_sweep(started)
                queued.pop(0)
    except BaseException:
        for _, started in queued:  # submitted, not yet (or not fully) waited for
            started.abandon()
        raise
    return results


@contextmanager
def _locked(out: Path):
    lock = lock_output_dir(out)
    try:
        yield lock
    finally:
        lock.release()


def _predict(config: PipelineConfig, sweeps, guards):
    from ..method.steps import predict_step

    inputs = [{"path": str(s.mixture_path.relative_to(config.output_dir)),
               "total_tokens": s.mixture.total_tokens} for s in sweeps]
    return predict_step([s.mixture for s in sweeps], inputs, guards,
                        target_tokens=config.target_tokens, steps=config.steps,
                        noise_aware=predict_noise_aware(config))


def _backtest(config: PipelineConfig, sweeps, guards) -> Optional[dict]:
    """Predict the largest budget's DDO mixture from the smaller ones (three or more
    budgets): the user's own evidence of whether extrapolation works on their data. The
    target's ceilings (``max_epochs``) do not apply at the held-out budget."""
    from ..method.backtest import MIN_BUDGETS, backtest
    from ..method.predict import PredictGuards

    if len(sweeps) < MIN_BUDGETS:
        return None
    held_out_guards = PredictGuards(floor=guards.floor,
                                    max_change_per_doubling=guards.max_change_per_doubling,
                                    hold_unmeasured=guards.hold_unmeasured)
    record = backtest([s.mixture for s in sweeps], held_out_guards,
                      noise_aware=predict_noise_aware(config))
    logger.info("backtest: predicting the %s-token DDO mixture from the smaller budgets misses "
                "by %.4f per weight on average (max %.4f)", human_tokens(record["held_out_budget"]),
                record["mean_abs_error"], record["max_abs_error"])
    return record


def _write_outputs(config: PipelineConfig, checked: CheckedPipeline, out: Path, sweeps,
                   prediction, mixture, backtest: Optional[dict] = None):
    """Render the mixture, exports, plots and report into a staging folder, then publish
    them together (see :func:`autoscale_ds.orchestrate.outputs.publish`)."""
    from ..atomic import atomic_write_json
    from ..formats.export import export_mixture
    from .report import write_report

    staging = staging_dir(out)
    mixture_name = mixture_file(mixture)
    save_mixture(staging / mixture_name, mixture)
    if backtest is not None:
        atomic_write_json(staging / BACKTEST_FILE, backtest)
    atomic_write_json(staging / SUMMARY_FILE, pipeline_summary(config, sweeps, mixture))
    exports = {}
    for fmt in checked.formats:
        atomic_write_text(staging / "exports" / f"{fmt}.txt",
                          export_mixture(mixture.weights, checked.data_paths, fmt))
        exports[fmt] = out / "exports" / f"{fmt}.txt"
    write_report(out, sweeps, prediction, mixture, out / mixture_name, exports, into=staging,
                 backtest=backtest)
    publish(staging, out, last=REPORT_FILE)
    return out / mixture_name, exports, out / REPORT_FILE


def pipeline_summary(config: PipelineConfig, sweeps, mixture) -> Dict[str, Any]:
    """``summary.json``: what the run cost and where its answer is, for scripts and checks.
    ``proxy_tokens_trained`` counts every token that the proxy runs of the plan train
    (including runs finished by an earlier invocation), i.e. the proxy compute of the answer."""
    budgets = sorted(config.budgets)
    return {
        "schema": SUMMARY_SCHEMA,
        "budgets": budgets,
        "proxy_schedule": config.proxy_schedule,
        "proxy_runs": sum(len(s.runs) for s in sweeps),
        "proxy_tokens_trained": sum(run.tokens_trained for s in sweeps for run in s.runs),
        "target_tokens": mixture.total_tokens,
        "mixture": mixture_file(mixture),
        "ddo_mixtures": {human_tokens(b): str(s.mixture_path.relative_to(config.output_dir))
                         for b, s in zip(budgets, sweeps)},
    }


def mixture_file(mixture) -> str:
    return f"mixture_{human_tokens(mixture.total_tokens)}.json"


def guard_settings(config: PipelineConfig, manifest=None) -> Dict[str, Any]:
    """The ``predict:`` section as PredictGuards settings, with ``max_epochs`` turned into
    per-domain ceilings: the share of the target each domain can fill from its training
    tokens."""
    settings = predict_section(config.predict) if config.predict else {}
    settings.pop("noise_aware", None)  # not a guard: see predict_noise_aware
    max_epochs = settings.pop("max_epochs", None)
    if max_epochs is None:
        return settings
    if config.target_tokens is None:
        raise InputError("predict: max_epochs needs target_tokens (with `steps` the target "
                         "total is not known before the prediction)")
    if manifest is None:
        from ..formats.manifest import load_manifest

        manifest = load_manifest(config.manifest)
    # 1 % below the exact share: whole samples and batches round a budget up a little.
    ceiling = {d: min(1.0, 0.99 * e.train.tokens * float(max_epochs) / float(config.target_tokens))
               for d, e in manifest.domains.items()}
    settings["ceiling"] = {**ceiling, **settings.get("ceiling", {})}
    return settings


def mixture_domains(config: PipelineConfig, manifest) -> List[str]:
    return config.domains or list(manifest.domains)


def predict_noise_aware(config: PipelineConfig) -> bool:
    """``predict: {noise_aware: ...}``, on by default."""
    settings = predict_section(config.predict) if config.predict else {}
    return bool(settings.get("noise_aware", True))
