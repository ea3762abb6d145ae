"""The run config of ``launchers/train.py`` (YAML), checked as a whole before anything starts."""

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import InputError
from ..yaml_config import load_yaml_config
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
    zero_stage: int = 0
    ds_config: Optional[str] = None
    """Optional DeepSpeed JSON to start from; batch sizes, optimizer and monitors are set in code."""
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01
    gradient_clipping: float = 1.0
    dropout: float = 0.0
    seed: int = 0
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
            raise InputError("invalid training config:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> List[str]:
        problems = []
        if bool(self.tokens_per_domain) == bool(self.mixture):
            problems.append("give exactly one of tokens_per_domain or mixture")
        for domain, tokens in dict(self.tokens_per_domain or {}).items():
            if not (_is_number(tokens) and tokens >= 0):
                problems.append(f"tokens_per_domain[{domain!r}] must be a number >= 0, got {tokens!r}")
        model_problem = check_model_choice(self.model_family, self.model_size)
        if model_problem:
            problems.append(model_problem)
        problems += _positive(self, ["seq_len", "micro_batch_size", "global_batch_size"]
                              + [n for n in ("eval_samples_per_domain", "eval_batch_size")
                                 if getattr(self, n) is not None])
        problems += _non_negative(self, ["eval_interval_steps", "checkpoint_interval_steps",
                                         "eval_tokens_per_domain", "eval_seed",
                                         "weight_decay", "gradient_clipping", "dropout"])
        if self.zero_stage not in (0, 1, 2, 3) or isinstance(self.zero_stage, bool):
            problems.append(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        checks = [
            ("learning_rate", lambda v: v > 0, "must be positive"),
            ("min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
            ("warmup_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)"),
            ("divergence_factor", lambda v: v > 1, "must be > 1"),
        ]
        if self.max_epochs is not None:
            checks.append(("max_epochs", lambda v: v > 0, "must be positive"))
        problems += [f"{name} {rule}, got {getattr(self, name)!r}" for name, test, rule in checks
                     if not (_is_number(getattr(self, name)) and test(getattr(self, name)))]
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not isinstance(self.monitor, list) or any(m not in ("csv", "tensorboard") for m in self.monitor):
            problems.append(f"monitor must be a list of csv / tensorboard, got {self.monitor!r}")
        if not isinstance(self.tokens_per_domain, dict):
            problems.append("tokens_per_domain must map domain names to token counts")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes what the run computes (not where it writes)."""
        import hashlib

        payload = {k: v for k, v in self.to_dict().items() if k not in ("output_dir", "progress")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(config, names) -> List[str]:
    return [f"{n} must be a positive integer, got {getattr(config, n)!r}" for n in names
            if not (isinstance(getattr(config, n), int) and not isinstance(getattr(config, n), bool)
                    and getattr(config, n) > 0)]


def _non_negative(config, names) -> List[str]:
    return [f"{n} must be >= 0, got {getattr(config, n)!r}" for n in names
            if not (_is_number(getattr(config, n)) and getattr(config, n) >= 0)]


def load_train_config(path, overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """Read a YAML run config; unknown keys are errors (a typo must not be silently ignored)."""
    return load_yaml_config(path, TrainConfig, "training config", overrides,
                            required=("manifest", "output_dir"))
