"""A DDO sweep: plan the 2m+1 proxy runs of one budget, run what is missing, solve.

Each run is keyed by the fingerprint of its complete training config, so a restarted sweep
skips every run whose row is already in the sweep's runs file, and a changed setting makes
new runs instead of silently reusing old ones. Rows are kept in plan order and carry only
deterministic fields (no timings), so a sweep that was killed and restarted any number of
times ends with the same bytes as one that never stopped.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..atomic import atomic_write_text
from ..formats.manifest import load_manifest
from ..errors import InputError
from ..train.config import TrainConfig
from ..train.plan import plan_samples
from ..yaml_config import load_yaml_config
from .settings import (ConfigProblems, Problems, boolean, ddo_section, is_number, is_whole, mapping,
                       one_line, text, text_list, token_count, train_section)

logger = logging.getLogger(__name__)

DEFAULT_RATIOS = {"gpt2": (0.2, 3.0), "bert": (1 / 3, 2.0)}  # AutoScale paper, Sec. 5
_RESERVED_TRAIN_KEYS = ("manifest", "output_dir", "tokens_per_domain", "mixture", "total_tokens",
                        "run_id", "seed")


@dataclass
class SweepConfig:
    manifest: str
    output_dir: str
    budget_tokens: float
    """Total training tokens of the base run."""
    domains: Optional[List[str]] = None
    """Domains to mix (default: all in the manifest)."""
    base_weights: Any = "uniform"
    """uniform, tokens (proportional to each domain's training tokens), or {domain: weight}."""
    ratios: Optional[List[float]] = None
    """Perturbation ratios (default: 1/5 and 3 for GPT-2, 1/3 and 2 for BERT)."""
    seeds: List[int] = field(default_factory=lambda: [0])
    """The base run is repeated for every seed (its spread is the noise estimate); perturbed
    runs use the first. With one seed and no ``ddo.noise_sigma`` the noise is unknown and the
    mixture carries no weight intervals (the pipeline defaults to ``[0, 1]``)."""
    replicate_perturbed: bool = False
    """Also run every perturbed run with each of ``seeds`` (not only the first): the fit then
    averages seeds at every ratio and the noise estimate pools every repeat, at
    ``len(seeds)`` times the cost of the perturbed runs."""
    train: Dict[str, Any] = field(default_factory=dict)
    """Training settings shared by every proxy run (any launchers/train.py setting)."""
    executor: Dict[str, Any] = field(default_factory=lambda: {"kind": "local", "workers": 1})
    ddo: Dict[str, Any] = field(default_factory=dict)
    """autoscale ddo options: min_ratio, max_ratio, noise_sigma, sensitivity_draws (default
    100), metric, allow_mixed_eval, ..."""
    retry_failed: bool = False
    origin = "sweep config"  # not a setting: what error messages call this config (its file)

    def __post_init__(self):
        problems = Problems()
        check_common_settings(self, problems)
        budget = token_count(problems, "budget_tokens", self.budget_tokens)
        if budget is not None:
            self.budget_tokens = budget
        boolean(problems, "retry_failed", self.retry_failed)
        problems.raise_if_any(self.origin)

    def perturbation_seeds(self) -> List[int]:
        return list(self.seeds) if self.replicate_perturbed else list(self.seeds[:1])

    @property
    def family(self) -> str:
        return self.train.get("model_family", "gpt2")

    def perturbation_ratios(self) -> List[float]:
        return list(self.ratios) if self.ratios else list(DEFAULT_RATIOS.get(self.family, (0.2, 3.0)))


def load_sweep_config(path, overrides: Optional[dict] = None) -> SweepConfig:
    origin = f"sweep config {path}"
    try:
        config = load_yaml_config(path, SweepConfig, "sweep config", overrides,
                                  required=("manifest", "output_dir", "budget_tokens"))
    except ConfigProblems as exc:
        raise exc.named(origin) from None
    config.origin = origin
    return config


def check_common_settings(config, problems: Problems) -> None:
    """Type checks of the settings a sweep and a pipeline share (all problems recorded)."""
    text(problems, "manifest", config.manifest)
    text(problems, "output_dir", config.output_dir)
    if config.domains is not None:
        text_list(problems, "domains", config.domains)
    _check_base_weights(config.base_weights, problems)
    ratios = config.ratios
    if ratios is not None and not (isinstance(ratios, list) and ratios and all(
            is_number(r) and r > 0 and r != 1 for r in ratios)):
        problems.add("ratios", f"must be a list of numbers > 0 and != 1 like [0.2, 3], got {ratios!r}")
    seeds = config.seeds
    if not (isinstance(seeds, list) and seeds and all(is_whole(s) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        problems.add("seeds", f"must be a list of distinct whole numbers >= 0 like [0, 1], got {seeds!r}")
    boolean(problems, "replicate_perturbed", config.replicate_perturbed)
    _check_train(config.train, problems)
    mapping(problems, "executor", config.executor, "{kind: local, workers: 2}")
    problems.attempt(None, ddo_section, config.ddo)


def _check_base_weights(spec, problems: Problems) -> None:
    if spec in ("uniform", "tokens"):
        return
    if not isinstance(spec, dict):
        problems.add("base_weights", f"must be uniform, tokens or a mapping like {{code: 2, web: 1}}, "
                     f"got {spec!r}")
        return
    for domain, weight in spec.items():
        if not (is_number(weight) and weight > 0):
            problems.add(f"base_weights.{domain}", f"must be a positive number, got {weight!r}")


def _check_train(train, problems: Problems) -> None:
    train_section(problems, train, "{model_size: tiny, seq_len: 128}", TrainConfig.__dataclass_fields__,
                  _RESERVED_TRAIN_KEYS, "the sweep")


@dataclass
class ProxyRun:
    run_id: str
    config: TrainConfig

    @property
    def key(self) -> str:
        """The run's identity in a runs file: its training config's fingerprint, which leaves
        out how it is computed (a WSD branch, or the same run from scratch)."""
        return self.config.fingerprint()

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def tokens_trained(self) -> int:
        """Tokens this run trains itself: its optimizer steps (whole samples, whole steps, as
        the trainer plans them), less the parent's steps for a branch."""
        config = self.config
        start = int(config.branch_from["step"]) if config.branch_from else 0
        return (self.total_steps - start) * config.global_batch_size * config.seq_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run's whole budget, as the trainer plans them."""
        config = self.config
        return plan_samples(config.tokens_per_domain, config.seq_len,
                            config.global_batch_size).total_steps

    @property
    def config_path(self) -> Path:
        return self.output_dir / "config.yaml"

    def write_config(self) -> Path:
        atomic_write_text(self.config_path, yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        return self.config_path


def base_tokens(config: SweepConfig) -> Dict[str, float]:
    manifest = load_manifest(config.manifest)
    domains = config.domains or list(manifest.domains)
    missing = [d for d in domains if d not in manifest.domains]
    if missing:
        raise InputError(f"domains: {missing} are not in {config.manifest}; it has "
                         f"{', '.join(manifest.domains)}")
    weights = named_weights(config.base_weights, domains, manifest)
    return {d: config.budget_tokens * weights[d] for d in domains}


def named_weights(spec, domains, manifest) -> Dict[str, float]:
    if spec == "uniform":
        return {d: 1.0 / len(domains) for d in domains}
    if spec == "tokens":
        sizes = {d: manifest.domains[d].train.tokens for d in domains}
        return {d: n / sum(sizes.values()) for d, n in sizes.items()}
    if isinstance(spec, dict) and set(spec) == set(domains) and all(
            isinstance(v, (int, float)) and v > 0 for v in spec.values()):
        total = sum(spec.values())
        return {d: spec[d] / total for d in domains}
    raise InputError(f"base_weights: must be 'uniform', 'tokens' or a positive weight per domain "
                     f"{domains}, got {spec!r}")


def plan_sweep(config: SweepConfig) -> List[ProxyRun]:
    """The base run (once per seed) and each domain at each ratio (first seed, or every seed
    with ``replicate_perturbed``), in order. Extra seeds' run ids end in ``-s<seed>``, so a
    sweep that turns replication on keeps its finished first-seed runs.

    Quantities are whole samples and every run fills whole optimizer steps, so the trainer
    consumes exactly what is planned. The base absorbs its own rounding; a perturbed run
    absorbs it in the perturbed domain only (by less than one global batch), so the other
    domains keep exactly the base quantities and DDO sees single-domain perturbations. The
    fit uses the ratios actually trained, not the nominal ones.
    """
    seq_len, batch = sequence_and_batch(config.train)
    base = whole_step_samples(base_tokens(config), seq_len, batch)
    runs = [_proxy(config, base_run_id(seed), samples_to_tokens(base, seq_len), seed)
            for seed in config.seeds]
    for domain in base:
        for ratio in config.perturbation_ratios():
            samples = dict(base, **{domain: _perturbed_samples(base, domain, ratio, batch)})
            for seed in config.perturbation_seeds():
                suffix = "" if seed == config.seeds[0] else f"-s{seed}"
                runs.append(_proxy(config, f"{domain}-x{ratio:.4g}{suffix}",
                                   samples_to_tokens(samples, seq_len), seed))
    return runs


def base_run_id(seed: int) -> str:
    return f"base-s{seed}"


def sequence_and_batch(train: Dict[str, Any]) -> Tuple[int, int]:
    """(seq_len, global_batch_size) of a `train:` settings block, defaults filled in."""
    defaults = TrainConfig.__dataclass_fields__
    values = []
    for name in ("seq_len", "global_batch_size"):
        value = train.get(name, defaults[name].default)
        if not (is_whole(value) and value > 0):
            raise InputError(f"train.{name}: must be a positive whole number, got {value!r}")
        values.append(value)
    return values[0], values[1]


def whole_step_samples(tokens: Dict[str, float], seq_len: int, batch: int) -> Dict[str, int]:
    """Whole samples per domain that fill whole optimizer steps (the largest domains give
    up the remainder), so the trainer consumes exactly what is planned."""
    samples = {d: int(n // seq_len) for d, n in tokens.items()}
    for _ in range(sum(samples.values()) % batch):
        largest = max(samples, key=lambda d: samples[d])
        samples[largest] -= 1
    too_small = [d for d, n in samples.items() if n < 1]
    if too_small:
        raise InputError(f"budget_tokens: gives domains {too_small} less than one sample of "
                         f"{seq_len} tokens in the base run; raise budget_tokens")
    return samples


def _perturbed_samples(base: Dict[str, int], domain: str, ratio: float, batch: int) -> int:
    others = sum(n for d, n in base.items() if d != domain)
    target = max(1, round(base[domain] * ratio))
    low = target - (others + target) % batch  # nearest counts that fill whole steps
    candidates = [n for n in (low, low + batch) if n >= 1]
    return min(candidates, key=lambda n: (abs(n - target), n))


def samples_to_tokens(samples: Dict[str, int], seq_len: int) -> Dict[str, int]:
    return {d: n * seq_len for d, n in samples.items()}


def _proxy(config: SweepConfig, run_id: str, tokens: Dict[str, float], seed: int) -> ProxyRun:
    settings = dict(config.train)
    settings.setdefault("progress", False)
    try:
        train = TrainConfig(manifest=str(Path(config.manifest).resolve()),
                            output_dir=str(Path(config.output_dir).resolve() / "runs" / run_id),
                            tokens_per_domain=tokens, run_id=run_id, seed=seed, **settings)
    except TypeError as exc:  # an unknown key under `train:` (the config check names it first)
        raise InputError(f"train: {exc}") from None
    except InputError as exc:
        raise InputError(f"train: {one_line(exc)}") from None
    return ProxyRun(run_id, train)
