"""``autoscale mix`` settings: the methods, their defaults, and one checked ``MixConfig`` from a
YAML file, command-line flags and ``--set`` overrides (every problem reported at once)."""

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence

from ..errors import InputError
from ..loaders import read_yaml
from .settings import (ConfigProblems, Problems, boolean, is_number, is_whole, mapping,
                       positive_number, text, text_list, token_count, train_section, unknown_keys)

logger = logging.getLogger(__name__)

METHODS = ("natural", "temperature", "unimax", "doremi", "regmix")
CLOSED_FORM = ("natural", "temperature", "unimax")
DEFAULT_TAU = 2.0
"""Temperature when ``tau`` is unset: weights ∝ tokens^0.5, XLM's sampling exponent (Conneau &
Lample 2019); mT5 and XLM-R use 0.3 (tau 3.33), Arivazhagan et al. up to tau 5."""
DEFAULT_UNIMAX_EPOCHS = 1.0
"""UniMax's cap when ``max_epochs`` is unset: no domain is repeated (Chung et al. 2023 sweep
1 to 10 epochs)."""
DOREMI_DEFAULTS = {"proxy_tokens": None, "reference_tokens": None, "base": "uniform",
                   "step_size": 1.0, "smoothing": 0.001, "seed": 0}
REGMIX_DEFAULTS = {"runs": 16, "proxy_tokens": None, "seed": 0, "regressor": "auto",
                   "candidates": 100_000, "top_k": 100, "max_epochs": None, "folds": 5}
"""16 proxy runs suit a CPU and a handful of domains; the paper trains 512 for 17 domains."""
RESERVED_TRAIN_KEYS = ("manifest", "output_dir", "tokens_per_domain", "mixture", "total_tokens",
                       "run_id", "seed", "doremi", "branch_from")

# ----------------------------------------------------------------------------- config


@dataclass
class MixConfig:
    manifest: str
    method: str
    out: str
    """The mixture file to write."""
    output_dir: Optional[str] = None
    """Work directory of the proxy runs (doremi, regmix), and summary.json."""
    domains: Optional[List[str]] = None
    target_tokens: Any = None
    """The mixture's total_tokens (default: every training token of its domains, one pass)."""
    tau: Any = None
    max_epochs: Any = None
    doremi: Dict[str, Any] = field(default_factory=dict)
    regmix: Dict[str, Any] = field(default_factory=dict)
    train: Dict[str, Any] = field(default_factory=dict)
    executor: Dict[str, Any] = field(default_factory=lambda: {"kind": "local", "workers": 1})
    retry_failed: bool = False
    origin = "mix config"  # not a setting: what error messages call this config

    def __post_init__(self):
        problems = Problems()
        self._check_common(problems)
        self.doremi = _section(problems, "doremi", self.doremi, DOREMI_DEFAULTS, _DOREMI_CHECKS)
        self.regmix = _section(problems, "regmix", self.regmix, REGMIX_DEFAULTS, _REGMIX_CHECKS)
        self._check_method_needs(problems)
        problems.raise_if_any(self.origin)

    def _check_common(self, problems: Problems) -> None:
        text(problems, "manifest", self.manifest)
        text(problems, "out", self.out)
        if self.method not in METHODS:
            problems.add("method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.output_dir is not None:
            text(problems, "output_dir", self.output_dir)
        if self.domains is not None:
            text_list(problems, "domains", self.domains)
        if self.target_tokens is not None:
            self.target_tokens = token_count(problems, "target_tokens", self.target_tokens)
        for name in ("tau", "max_epochs"):
            if getattr(self, name) is not None:
                positive_number(problems, name, getattr(self, name))
        boolean(problems, "retry_failed", self.retry_failed)
        _check_train(problems, self.train)
        mapping(problems, "executor", self.executor, "{kind: local, workers: 2}")

    def _check_method_needs(self, problems: Problems) -> None:
        if self.method in ("doremi", "regmix"):
            if self.output_dir is None:
                problems.add("output_dir", f"method {self.method} trains proxy runs: give a "
                             "work directory for them")
            if getattr(self, self.method).get("proxy_tokens") is None:
                problems.add(f"{self.method}.proxy_tokens", "needed: the tokens of each proxy run")
        if self.method == "unimax" and self.target_tokens is None:
            problems.add("target_tokens", "unimax needs the training budget it splits (e.g. 10M)")
        if self.tau is not None and self.method != "temperature":
            logger.warning("tau applies to method temperature only; ignored for %s", self.method)

    @property
    def tau_used(self) -> float:
        return float(self.tau) if self.tau is not None else DEFAULT_TAU


def _check_train(problems: Problems, train: Any) -> None:
    from ..train.config import TrainConfig

    train_section(problems, train, "{model_size: tiny, seq_len: 64}", TrainConfig.__dataclass_fields__,
                  RESERVED_TRAIN_KEYS, "autoscale mix")


def _whole_at_least(minimum: int):
    def check(problems: Problems, where: str, value: Any):
        if is_whole(value) and value >= minimum:
            return value
        problems.add(where, f"must be a whole number >= {minimum}, got {value!r}")
        return None
    return check


def _choice(options: Sequence[str]):
    def check(problems: Problems, where: str, value: Any):
        if value in options:
            return value
        problems.add(where, f"must be one of {', '.join(options)}, got {value!r}")
        return None
    return check


def _share(problems: Problems, where: str, value: Any):
    if is_number(value) and 0 <= value <= 1:
        return float(value)
    problems.add(where, f"must be a number in [0, 1], got {value!r}")
    return None


def _optional_epochs(problems: Problems, where: str, value: Any):
    return None if value is None else positive_number(problems, where, value)


_DOREMI_CHECKS = {
    "proxy_tokens": token_count, "reference_tokens": token_count,
    "base": _choice(("uniform", "tokens")), "step_size": positive_number, "smoothing": _share,
    "seed": _whole_at_least(0),
}
_REGMIX_CHECKS = {
    "runs": _whole_at_least(2), "proxy_tokens": token_count, "seed": _whole_at_least(0),
    "regressor": _choice(("auto", "lightgbm", "ridge")), "candidates": _whole_at_least(1),
    "top_k": _whole_at_least(1), "max_epochs": _optional_epochs, "folds": _whole_at_least(2),
}


def _section(problems: Problems, where: str, value: Any, defaults: dict, checks: dict) -> dict:
    """A method's section with its defaults filled in, every value checked (token counts
    such as ``50K`` read as numbers)."""
    given = mapping(problems, where, value if value is not None else {}, "{proxy_tokens: 50K}")
    unknown_keys(problems, where, given, list(defaults))
    settings = dict(defaults)
    for key, raw in given.items():
        if key in checks and raw is not None:
            settings[key] = checks[key](problems, f"{where}.{key}", raw)
    return settings


def mix_config_from(settings: dict, origin: str = "mix config") -> MixConfig:
    """A MixConfig from plain settings; every problem (unknown keys with a hint, missing and
    bad values) is raised at once as one ConfigProblems naming ``origin``."""
    problems = Problems()
    known = [f.name for f in fields(MixConfig)]
    unknown_keys(problems, "mix", {k: v for k, v in settings.items() if k not in known}, known)
    problems.items = [p[len("mix."):] for p in problems.items]  # top-level keys: no prefix
    for name in ("manifest", "method", "out"):
        if settings.get(name) is None:
            problems.add(name, "missing (required)")
    if not problems.items:
        try:
            config = MixConfig(**settings)
        except ConfigProblems as exc:
            raise exc.named(origin) from None
        config.origin = origin
        return config
    try:  # the remaining settings' problems too, in the same line
        MixConfig(**{k: v for k, v in settings.items() if k in known})
    except ConfigProblems as exc:
        problems.items += exc.problems
    except TypeError:
        pass  # a required setting is missing: already recorded
    raise ConfigProblems(origin, problems.items)


def load_mix_config(path=None, flags: Optional[dict] = None,
                    overrides: Optional[dict] = None) -> MixConfig:
    """The config file (optional), then command-line flags, then ``--set`` overrides; a dotted
    key (``regmix.runs=8``) sets one key of a section."""
    settings: Dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path, "mix config")
        if not isinstance(raw, dict):
            raise InputError(f"mix config {path}: expected a mapping of settings")
        settings.update(raw)
    settings.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key, value in (overrides or {}).items():
        _set_dotted(settings, key, value)
    return mix_config_from(settings, f"mix config {path}" if path else "autoscale mix")


def _set_dotted(settings: dict, key: str, value: Any) -> None:
    section, dot, name = key.partition(".")
    if dot and isinstance(settings.get(section, {}), dict):
        settings[section] = {**settings.get(section, {}), name: value}
    else:
        settings[key] = value
