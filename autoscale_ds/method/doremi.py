"""DoReMi's domain-weight update (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up
Language Model Pretraining", Algorithm 1), as pure numpy.

A reference model is trained on a base mixture. A proxy model is then trained with online
Group DRO: at every step t, per domain i,

    lambda_t[i] = (1 / tokens of domain i in the batch) * sum over those tokens of
                  max(loss_proxy - loss_reference, 0)          (the clipped excess loss)
    alpha'_t    = alpha_{t-1} * exp(step_size * lambda_t)
    alpha_t     = (1 - smoothing) * alpha'_t / sum(alpha'_t) + smoothing / k

and the output mixture is the average of alpha_1 .. alpha_T. Domains whose excess loss the
proxy keeps above the reference's (the learnable ones it has not learnt yet) gain weight;
domains at their noise floor (excess ~0) lose it. Paper defaults: step_size 1, smoothing 1e-3.

This module only does the arithmetic (``DoReMiWeights``) and reads the trajectory file the
trainer writes (``read_trajectory``); the training loop lives in ``train/doremi.py``.
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

DEFAULT_STEP_SIZE = 1.0
DEFAULT_SMOOTHING = 1e-3


class DoReMiWeights:
    """Current domain weights, their running sum (for the average) and the number of updates.

    Every number is float64 and every update is the same sequence of numpy operations, so the
    same inputs give the same bytes; ``to_dict``/``from_dict`` round-trip exactly (Python
    floats), which is what makes a resumed run identical to an uninterrupted one.
    """

    def __init__(self, domains: Sequence[str], initial_weights: Sequence[float]):
        self.domains = [str(d) for d in domains]
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"need distinct domain names, got {list(domains)!r}")
        self.weights = _check_distribution(initial_weights, self.domains, "initial weights")
        self.weight_sum = np.zeros(len(self.domains), dtype=np.float64)
        self.steps = 0

    def update(self, excess_loss_per_domain: Sequence[float], step_size: float = DEFAULT_STEP_SIZE,
               smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
        """One exponentiated-gradient step from this step's per-domain excess losses
        (a domain absent from the step's batch is passed as 0: no evidence, no change before
        renormalisation). Returns the new weights, which also enter the running average."""
        excess = self._check_excess(excess_loss_per_domain)
        _check_settings(step_size, smoothing)
        # In log space: exp(step_size * excess) alone overflows for large losses, and the
        # shift by the maximum leaves the normalised result unchanged.
        with np.errstate(divide="ignore"):  # a weight of 0 stays 0 (log -inf, exp 0)
            logits = np.log(self.weights) + step_size * excess
        scaled = np.exp(logits - logits.max())
        uniform = 1.0 / len(self.domains)
        self.weights = (1.0 - smoothing) * (scaled / scaled.sum()) + smoothing * uniform
        self.weight_sum = self.weight_sum + self.weights
        self.steps += 1
        return self.weights.copy()

    def average_weights(self) -> Dict[str, float]:
        """The DoReMi output: the mean of the weights after each update (the initial weights
        before any update)."""
        mean = self.weight_sum / self.steps if self.steps else self.weights
        return dict(zip(self.domains, (float(w) for w in mean)))

    def current_weights(self) -> Dict[str, float]:
        return dict(zip(self.domains, (float(w) for w in self.weights)))

    def to_dict(self) -> dict:
        """Plain Python numbers (JSON- and torch.save-friendly, exact)."""
        return {"domains": list(self.domains), "weights": self.weights.tolist(),
                "weight_sum": self.weight_sum.tolist(), "steps": self.steps}

    @classmethod
    def from_dict(cls, state: Mapping) -> "DoReMiWeights":
        try:
            domains, steps = list(state["domains"]), state["steps"]
            weights, weight_sum = state["weights"], state["weight_sum"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"DoReMi state needs domains, weights, weight_sum and steps; "
                             f"missing {exc}") from None
        restored = cls(domains, weights)  # checks them
        # as saved, not renormalised: dividing by a sum of 1 - 1ulp would change the bits
        restored.weights = np.asarray(weights, dtype=np.float64)
        restored.weight_sum = np.asarray(weight_sum, dtype=np.float64)
        if restored.weight_sum.shape != (len(domains),):
            raise ValueError(f"DoReMi state: weight_sum has {restored.weight_sum.size} entries "
                             f"for {len(domains)} domains")
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"DoReMi state: steps must be an integer >= 0, got {steps!r}")
        restored.steps = steps
        return restored

    def _check_excess(self, values: Sequence[float]) -> np.ndarray:
        excess = np.asarray(values, dtype=np.float64)
        if excess.shape != (len(self.domains),):
            raise ValueError(f"need one excess loss per domain ({len(self.domains)}: "
                             f"{self.domains}), got shape {excess.shape}")
        for domain, value in zip(self.domains, excess):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"excess loss of domain {domain!r} is {float(value)!r}; it must be "
                                 "finite and >= 0 (a NaN/inf means the proxy or the reference "
                                 "model's loss is broken)")
        return excess


def _check_distribution(values: Sequence[float], domains: List[str], what: str) -> np.ndarray:
    weights = np.asarray(values, dtype=np.float64)
    if weights.shape != (len(domains),):
        raise ValueError(f"{what}: need {len(domains)} weights ({domains}), got {list(values)!r}")
    bad = [d for d, w in zip(domains, weights) if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"{what}: weights of {bad} must be finite and >= 0, got {list(values)!r}")
    if not abs(float(weights.sum()) - 1.0) <= 1e-6:
        raise ValueError(f"{what} must sum to 1, got {float(weights.sum())!r}")
    return weights / weights.sum()


def _check_settings(step_size: float, smoothing: float) -> None:
    if not (_is_number(step_size) and step_size > 0):
        raise ValueError(f"DoReMi step_size must be a positive number, got {step_size!r}")
    if not (_is_number(smoothing) and 0 <= smoothing <= 1):
        raise ValueError(f"DoReMi smoothing must be in [0, 1], got {smoothing!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def settings_problems(settings) -> List[str]:
    """Problems of a run config's ``doremi`` mapping, all at once (for ``TrainConfig``)."""
    shape = "doremi must be {reference_checkpoint_dir: PATH, step_size: X, smoothing: C}"
    if not isinstance(settings, dict):
        return [f"{shape}, got {settings!r}"]
    problems = []
    unknown = sorted(str(k) for k in set(settings) - {"reference_checkpoint_dir", "step_size",
                                                       "smoothing"})
    if unknown:
        problems.append(f"{shape}; unknown key(s) {unknown}")
    directory = settings.get("reference_checkpoint_dir")
    if not (isinstance(directory, str) and directory):
        problems.append("doremi.reference_checkpoint_dir must be the reference run's checkpoint "
                        f"directory (<its output_dir>/checkpoints), got {directory!r}")
    step_size = settings.get("step_size", DEFAULT_STEP_SIZE)
    if not (_is_number(step_size) and step_size > 0):
        problems.append(f"doremi.step_size must be a positive number, got {step_size!r}")
    smoothing = settings.get("smoothing", DEFAULT_SMOOTHING)
    if not (_is_number(smoothing) and 0 <= smoothing <= 1):
        problems.append(f"doremi.smoothing must be in [0, 1], got {smoothing!r}")
    return problems


def with_defaults(settings: Mapping) -> dict:
    """The ``doremi`` mapping with the paper's defaults filled in (so a config that spells
    them out and one that leaves them unset are the same run)."""
    return {"reference_checkpoint_dir": settings["reference_checkpoint_dir"],
            "step_size": float(settings.get("step_size", DEFAULT_STEP_SIZE)),
            "smoothing": float(settings.get("smoothing", DEFAULT_SMOOTHING))}


# ----------------------------------------------------------------------------- trajectory file

def trajectory_line(step: int, weights: Mapping[str, float],
                    excess_loss: Optional[Mapping[str, float]] = None) -> str:
    """One line of ``doremi_weights.jsonl``: the weights after update ``step`` (1-based)."""
    record = {"step": int(step), "weights": dict(weights)}
    if excess_loss is not None:
        record["excess_loss"] = dict(excess_loss)
    return json.dumps(record, allow_nan=False) + "\n"


def read_trajectory(path) -> Tuple[List[int], Dict[str, List[float]]]:
    """``(steps, weights per domain)`` from a ``doremi_weights.jsonl`` file: ``steps[j]`` is
    the update number of line j and ``weights[domain][j]`` that domain's weight after it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"DoReMi trajectory {path}: file not found") from None
    steps: List[int] = []
    weights: Dict[str, List[float]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, row = int(record["step"]), dict(record["weights"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"DoReMi trajectory {path} line {number}: not a "
                             f"{{step, weights}} record ({exc})") from None
        if steps and set(row) != set(weights):
            raise InputError(f"DoReMi trajectory {path} line {number}: domains {sorted(row)} "
                             f"differ from the first line's {sorted(weights)}")
        steps.append(step)
        for domain, value in row.items():
            weights.setdefault(domain, []).append(float(value))
    return steps, weights


def running_average(weights: Mapping[str, Sequence[float]]) -> Dict[str, np.ndarray]:
    """The average of the weights up to each step (what DoReMi would output if stopped there)."""
    return {d: np.cumsum(np.asarray(w, dtype=np.float64)) / np.arange(1, len(w) + 1)
            for d, w in weights.items()}
