"""The run config of ``launchers/train.py`` (YAML), checked as a whole before anything starts."""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import InputError
from ..method.doremi import settings_problems as doremi_problems
from ..method.doremi import with_defaults as doremi_with_defaults
from ..yaml_config import load_yaml_config
from .plan import DECAY_SHAPES, LR_SCHEDULES
from .presets import check_model_choice


@dataclass
class TrainConfig:
    manifest: str
    """Domains manifest written by `autoscale prepare`."""
    output_dir: str
    """Checkpoints, monitor logs and result.json go here."""
    tokens_per_domain: Dict[str, float] = field(default_factory=dict)
    """Training budget per domain. Or give `mixture` (+ optional `total_tokens`)."""
    mixture: Optional[str] = None
    """An autoscale.mixture/v1 file: its weights x total tokens become the budget."""
    total_tokens: Optional[float] = None
    """With `mixture`: the budget to split (default: the mixture's own total)."""
    run_id: str = "run"
    model_family: str = "gpt2"
    """gpt2 (causal LM) or bert (masked LM)."""
    model_size: str = "tiny"
    seq_len: int = 128
    micro_batch_size: int = 8
    global_batch_size: int = 8
    """Sequences per optimizer step; gradient accumulation is derived from it."""
    zero_stage: Optional[int] = None
    """ZeRO stage 0-3 (default: the ds_config's stage, else 0); set, it overrides ds_config."""
    ds_config: Optional[str] = None
    """Optional DeepSpeed JSON to start from; batch sizes, optimizer, precision, clipping and
    monitors come from this config (overridden keys are listed in one warning)."""
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    """Warmup as a share of the run's optimizer steps (ignored when `warmup_steps` is set)."""
    warmup_steps: Optional[int] = None
    """Warmup in optimizer steps; overrides `warmup_fraction`, so runs of several budgets
    (a WSD family and its branches) share one warmup."""
    lr_schedule: str = "cosine"
    """cosine (warmup, cosine decay to min_lr over the whole run), wsd (warmup, constant peak,
    decay to min_lr over the last `decay_fraction` of the run's steps) or constant."""
    decay_fraction: float = 0.2
    """wsd: share of this run's own optimizer steps (a branch: of its own budget) that decay."""
    decay_shape: str = "linear"
    """wsd decay: linear, or 1-sqrt (lr = min_lr + (peak - min_lr)(1 - sqrt(progress)))."""
    weight_decay: float = 0.01
    gradient_clipping: float = 1.0
    dropout: float = 0.0
    seed: int = 0
    """Initial weights and the order of each domain's samples (an integer >= 0)."""
    eval_interval_steps: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_tokens_per_domain: int = 32768
    """Cap on each domain's eval tokens (0: the whole validation split). The eval set is
    drawn from the validation split by `eval_seed`, identically for every run."""
    eval_seed: int = 1234
    """Seed of the eval set's draw, independent of `seed`: every seed and arm of a
    comparison is measured on the same tokens."""
    eval_samples_per_domain: Optional[int] = None
    """Optional further cap in samples (tests use it to stay fast)."""
    eval_batch_size: Optional[int] = None
    """Sequences per evaluation forward pass (default: 4 x micro_batch_size; evaluation keeps
    no activations for a backward pass, so larger batches fit)."""
    checkpoint_interval_steps: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints_at_steps: List[int] = field(default_factory=list)
    """Also save a checkpoint after each of these optimizer steps and never prune it: the
    branch points that shorter runs of a WSD family start from (`branch_from`)."""
    branch_from: Optional[Dict[str, Any]] = None
    """{checkpoint_dir: PATH, step: N}: start from step N of a parent run (its
    `<output_dir>/checkpoints`, kept there by its `keep_checkpoints_at_steps`, read only) and
    train on to this run's own budget with its own decay. The parent must be the same run
    config up to the budget and schedule, with the same mixture proportions."""
    doremi: Optional[Dict[str, Any]] = None
    """{reference_checkpoint_dir: PATH, step_size: 1.0, smoothing: 0.001}: train this run as a
    DoReMi proxy (Xie et al. 2023): every step compares its per-token losses with those of the
    frozen reference model saved in PATH (the reference run's `<output_dir>/checkpoints`, same
    model_family, model_size and seq_len), updates the domain weights by online Group DRO and
    samples the next step's batch with them. `tokens_per_domain` is the total budget split by
    the initial (base) weights. Writes `<output_dir>/doremi_weights.jsonl` and the averaged
    weights into result.json (`doremi.average_weights`). See train/doremi.py."""
    max_epochs: Optional[float] = None
    """Cap on passes over a domain's tokens; an over-request is an error."""
    divergence_factor: float = 3.0
    """After warmup, a loss this many times the best smoothed loss marks the run diverged."""
    precision: str = "auto"
    """auto (bf16 on GPUs that have it, else fp32), fp32, bf16 or fp16."""
    monitor: List[str] = field(default_factory=lambda: ["csv"])
    """DeepSpeed monitors to enable: csv, tensorboard."""
    progress: bool = True

    def __post_init__(self):
        problems = self._problems()
        if problems:
            # One line: the CLI prints it as a single `train: error:` line.
            raise InputError("invalid training config: " + "; ".join(problems))
        if self.doremi is not None:  # defaults spelt out: both spellings are one run
            self.doremi = doremi_with_defaults(self.doremi)

    def _problems(self) -> List[str]:
        """Every problem at once; type checks come first so no rule below ever meets a value
        of the wrong type (a traceback instead of a message)."""
        problems = _type_problems(self)
        problems += self._budget_problems()
        model_problem = check_model_choice(self.model_family, self.model_size)
        if model_problem:
            problems.append(model_problem)
        problems += _positive(self, ["seq_len", "micro_batch_size", "global_batch_size"]
                              + [n for n in ("eval_samples_per_domain", "eval_batch_size")
                                 if getattr(self, n) is not None])
        problems += _non_negative_integers(self, ["seed", "eval_seed", "eval_interval_steps",
                                                  "checkpoint_interval_steps",
                                                  "eval_tokens_per_domain"])
        problems += _non_negative(self, ["weight_decay", "gradient_clipping", "dropout"])
        if self.zero_stage is not None and (self.zero_stage not in (0, 1, 2, 3)
                                            or isinstance(self.zero_stage, bool)):
            problems.append(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        problems += _rule_problems(self)
        problems += _schedule_problems(self)
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not isinstance(self.monitor, list) or any(m not in ("csv", "tensorboard") for m in self.monitor):
            problems.append(f"monitor must be a list of csv / tensorboard, got {self.monitor!r}")
        if isinstance(self.ds_config, str):
            problems += _ds_config_problems(self.ds_config)
        return problems

    def _budget_problems(self) -> List[str]:
        if not isinstance(self.tokens_per_domain, dict):
            return [f"tokens_per_domain must map domain names to token counts, "
                    f"got {self.tokens_per_domain!r}"]
        problems = []
        if bool(self.tokens_per_domain) == bool(self.mixture):
            problems.append("give exactly one of tokens_per_domain or mixture")
        for domain, tokens in self.tokens_per_domain.items():
            if not (_is_number(tokens) and tokens >= 0):
                problems.append(f"tokens_per_domain[{domain!r}] must be a number >= 0, got {tokens!r}")
        if self.total_tokens is not None and not (_is_number(self.total_tokens) and self.total_tokens > 0):
            problems.append(f"total_tokens must be a positive number, got {self.total_tokens!r}")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes what the run computes (not where it writes)."""
        import hashlib

        # Not hashed either: how the result is computed. A WSD branch started from its
        # parent's checkpoint trains the same steps on the same samples as the run alone, and
        # the checkpoints a run keeps for its branches do not change its weights; so a branch
        # whose parent checkpoint is gone, recomputed from scratch, is still the same run.
        payload = {k: v for k, v in self.to_dict().items()
                   if k not in ("output_dir", "progress", "branch_from", "keep_checkpoints_at_steps")}
        # zero_stage was `0` before it could be left unset: hashing unset as 0 keeps the keys
        # of runs already recorded in a sweep, so a restarted sweep does not retrain them.
        payload["zero_stage"] = 0 if self.zero_stage is None else self.zero_stage
        # Fields added later are hashed only when they change the run, so configs written
        # before they existed keep their fingerprint (and their recorded results).
        for name, default in _LATER_FIELD_DEFAULTS.items():
            if payload[name] == default:
                del payload[name]
        if self.lr_schedule != "wsd":  # the decay settings are unused then
            payload.pop("decay_fraction", None)
            payload.pop("decay_shape", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_LATER_FIELD_DEFAULTS = {"warmup_steps": None, "lr_schedule": "cosine", "decay_fraction": 0.2,
                         "decay_shape": "linear", "doremi": None}

# Fields whose only rule is their type; the others get a rule of their own below.
_STRING_FIELDS = ("manifest", "output_dir", "run_id")
_OPTIONAL_STRING_FIELDS = ("mixture", "ds_config")


def _type_problems(config: "TrainConfig") -> List[str]:
    problems = [f"{name} must be a non-empty string, got {getattr(config, name)!r}"
                for name in _STRING_FIELDS
                if not (isinstance(getattr(config, name), str) and getattr(config, name))]
    problems += [f"{name} must be a path (a string), got {getattr(config, name)!r}"
                 for name in _OPTIONAL_STRING_FIELDS
                 if getattr(config, name) is not None and not isinstance(getattr(config, name), str)]
    if not isinstance(config.progress, bool):
        problems.append(f"progress must be true or false, got {config.progress!r}")
    return problems


def _rule_problems(config: "TrainConfig") -> List[str]:
    checks = [
        ("learning_rate", lambda v: v > 0, "must be positive"),
        ("min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        ("warmup_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("divergence_factor", lambda v: v > 1, "must be > 1"),
    ]
    if config.max_epochs is not None:
        checks.append(("max_epochs", lambda v: v > 0, "must be positive"))
    return [f"{name} {rule}, got {getattr(config, name)!r}" for name, test, rule in checks
            if not (_is_number(getattr(config, name)) and test(getattr(config, name)))]


def _schedule_problems(config: "TrainConfig") -> List[str]:
    problems = []
    if config.lr_schedule not in LR_SCHEDULES:
        problems.append(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                        f"got {config.lr_schedule!r}")
    if config.decay_shape not in DECAY_SHAPES:
        problems.append(f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, "
                        f"got {config.decay_shape!r}")
    if not (_is_number(config.decay_fraction) and 0 < config.decay_fraction <= 1):
        problems.append(f"decay_fraction must be in (0, 1], got {config.decay_fraction!r}")
    if config.warmup_steps is not None:
        problems += _non_negative_integers(config, ["warmup_steps"])
    steps = config.keep_checkpoints_at_steps
    if not (isinstance(steps, list) and all(_is_integer(s) and s > 0 for s in steps)):
        problems.append(f"keep_checkpoints_at_steps must be a list of optimizer steps (integers "
                        f"> 0), got {steps!r}")
    if config.branch_from is not None:
        problems += _branch_problems(config.branch_from)
    if config.doremi is not None:
        problems += doremi_problems(config.doremi)
        if config.branch_from is not None:  # a branch reads its parent's fixed stream
            problems.append("doremi and branch_from cannot be combined: a DoReMi run's "
                            "stream follows its own weights")
    return problems


def _branch_problems(branch) -> List[str]:
    shape = "branch_from must be {checkpoint_dir: PATH, step: N}"
    if not isinstance(branch, dict):
        return [f"{shape}, got {branch!r}"]
    problems = []
    unknown = sorted(str(k) for k in set(branch) - {"checkpoint_dir", "step"})
    if unknown:
        problems.append(f"{shape}; unknown key(s) {unknown}")
    directory, step = branch.get("checkpoint_dir"), branch.get("step")
    if not (isinstance(directory, str) and directory):
        problems.append(f"branch_from.checkpoint_dir must be the parent run's checkpoint "
                        f"directory (a path), got {directory!r}")
    if not (_is_integer(step) and step > 0):
        problems.append(f"branch_from.step must be an optimizer step (an integer > 0), got {step!r}")
    return problems


def _ds_config_problems(path: str) -> List[str]:
    """Checked here, with the rest, so a wrong path fails before any model is built."""
    try:
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"ds_config {path}: file not found"]
    except (OSError, UnicodeDecodeError) as exc:
        return [f"ds_config {path}: cannot read ({exc})"]
    except ValueError as exc:
        return [f"ds_config {path}: not valid JSON ({exc})"]
    if not isinstance(settings, dict):
        return [f"ds_config {path}: expected a JSON object of DeepSpeed settings"]
    return []


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(config, names) -> List[str]:
    return [f"{n} must be a positive integer, got {getattr(config, n)!r}" for n in names
            if not (_is_integer(getattr(config, n)) and getattr(config, n) > 0)]


def _non_negative_integers(config, names) -> List[str]:
    return [f"{n} must be an integer >= 0, got {getattr(config, n)!r}" for n in names
            if not (_is_integer(getattr(config, n)) and getattr(config, n) >= 0)]


def _non_negative(config, names) -> List[str]:
    return [f"{n} must be >= 0, got {getattr(config, n)!r}" for n in names
            if not (_is_number(getattr(config, n)) and getattr(config, n) >= 0)]


def load_train_config(path, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Read a YAML run config; unknown keys are errors (a typo must not be silently ignored)."""
    try:
        return load_yaml_config(path, TrainConfig, "training config", overrides,
                                required=("manifest", "output_dir"))
    except InputError as exc:
        message = str(exc)
        if str(path) in message:
            raise
        raise InputError(f"training config {path}: {message}") from None
