"""``autoscale pipeline``: DDO at two or more budgets -> AutoScale prediction at the target
-> exports -> a Markdown report with plots.

Every step reuses what is already on disk: each budget's sweep skips finished runs, so an
interrupted pipeline is resumed by running the same command again.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


from ..atomic import atomic_write_text
from ..errors import InputError
from ..formats import save_mixture
from ..tables import human_tokens
from .lock import DirectoryLock
from .runner import run_sweep
from .sweep import SweepConfig
from ..yaml_config import load_yaml_config

logger = logging.getLogger(__name__)

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
    train: Dict[str, Any] = field(default_factory=dict)
    executor: Dict[str, Any] = field(default_factory=lambda: {"kind": "local", "workers": 1})
    ddo: Dict[str, Any] = field(default_factory=dict)
    predict: Dict[str, Any] = field(default_factory=dict)
    """Guards: floor ({domain or "*": weight}) and max_change_per_doubling."""
    export: Dict[str, Any] = field(default_factory=lambda: {"formats": ["megatron", "gpt-neox", "hf"]})
    """formats (list) and data_paths (a paths map file; default: the manifest's own stores)."""

    def __post_init__(self):
        problems = []
        if not isinstance(self.budgets, list) or len(self.budgets) < 2 or \
                len(set(self.budgets)) != len(self.budgets):
            problems.append(f"budgets must list two or more distinct proxy budgets, got {self.budgets!r}")
        if (self.target_tokens is None) == (self.steps is None):
            problems.append("give exactly one of target_tokens or steps")
        if problems:
            raise InputError("invalid pipeline config:\n  - " + "\n  - ".join(problems))
        if self.seeds is None:
            self.seeds = list(DEFAULT_SEEDS)
        elif isinstance(self.seeds, list) and len(self.seeds) == 1 and not self._noise_given():
            logger.warning("seeds: %s runs each budget's base run once, so the noise cannot be "
                           "estimated and no weight intervals are made; use seeds: [0, 1] (the "
                           "default) or set ddo: {noise_sigma: S}", self.seeds)

    def _noise_given(self) -> bool:
        return isinstance(self.ddo, dict) and self.ddo.get("noise_sigma") is not None

    def sweep(self, budget: float) -> SweepConfig:
        return SweepConfig(manifest=self.manifest, output_dir=str(Path(self.output_dir) / f"ddo_{human_tokens(budget)}"),
                           budget_tokens=budget, domains=self.domains, base_weights=self.base_weights,
                           ratios=self.ratios, seeds=self.seeds, train=self.train,
                           executor=self.executor, ddo=self.ddo)


def load_pipeline_config(path, overrides: Optional[dict] = None) -> PipelineConfig:
    return load_yaml_config(path, PipelineConfig, "pipeline config", overrides,
                            required=("manifest", "output_dir", "budgets"))


@dataclass
class PipelineResult:
    sweeps: list
    prediction: Any
    mixture_path: Path
    report_path: Path
    exports: Dict[str, Path]


def run_pipeline(config: PipelineConfig) -> PipelineResult:
    out = Path(config.output_dir)
    with DirectoryLock(out):
        sweeps = []
        for index, budget in enumerate(sorted(config.budgets), start=1):
            logger.info("DDO sweep %d of %d: %s tokens per base run", index, len(config.budgets),
                        human_tokens(budget))
            sweeps.append(run_sweep(config.sweep(budget)))
        logger.info("predicting the mixture at the target budget, writing exports and the report")
        prediction, mixture = _predict(config, sweeps)
        mixture_path = out / f"mixture_{human_tokens(mixture.total_tokens)}.json"
        save_mixture(mixture_path, mixture)
        exports = _exports(config, mixture, out)
        from .report import write_report

        report_path = write_report(out, sweeps, prediction, mixture, mixture_path, exports)
    return PipelineResult(sweeps, prediction, mixture_path, report_path, exports)


def _predict(config: PipelineConfig, sweeps):
    from ..predict import PredictGuards, predict, prediction_to_mixture

    guards = PredictGuards(**guard_settings(config))
    prediction = predict([s.mixture for s in sweeps], target_tokens=config.target_tokens,
                         steps=config.steps, guards=guards)
    inputs = [{"path": str(s.mixture_path.relative_to(config.output_dir)),
               "total_tokens": s.mixture.total_tokens} for s in sweeps]
    return prediction, prediction_to_mixture(prediction, inputs, guards)


def guard_settings(config: PipelineConfig) -> Dict[str, Any]:
    """The ``predict:`` section, with ``max_epochs`` turned into per-domain ceilings: the
    share of the target each domain can fill from its training tokens."""
    settings = dict(config.predict)
    max_epochs = settings.pop("max_epochs", None)
    if max_epochs is None:
        return settings
    if config.target_tokens is None:
        raise InputError("predict: max_epochs needs target_tokens (with `steps` the target "
                         "total is not known before the prediction)")
    from ..data.manifest import load_manifest

    manifest = load_manifest(config.manifest)
    # 1 % below the exact share: whole samples and batches round a budget up a little.
    ceiling = {d: min(1.0, 0.99 * e.train.tokens * float(max_epochs) / float(config.target_tokens))
               for d, e in manifest.domains.items()}
    settings["ceiling"] = {**ceiling, **settings.get("ceiling", {})}
    return settings


def _exports(config: PipelineConfig, mixture, out: Path) -> Dict[str, Path]:
    from ..export import export_mixture, load_data_paths

    spec = config.export or {}
    paths = load_data_paths(spec.get("data_paths") or config.manifest)
    written = {}
    for fmt in spec.get("formats", []):
        path = out / "exports" / f"{fmt}.txt"
        atomic_write_text(path, export_mixture(mixture.weights, paths, fmt))
        written[fmt] = path
    return written


def mixture_domains(config: PipelineConfig, manifest) -> List[str]:
    return config.domains or list(manifest.domains)
