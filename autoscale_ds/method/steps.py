"""The method's two steps as services: DDO at one budget, and the prediction across budgets.

``autoscale ddo`` / ``autoscale predict`` and the orchestrator (sweeps, the pipeline) all
call these, so the solve, the sensitivity report, the noise-aware shrinkage and the
provenance are assembled in one place; the callers only parse, call and print.
"""

import logging
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..formats.schemas import Mixture, RunsFile
from .ddo import DDOOptions, DDOResult, Design, build_design, result_to_mixture, solve_design
from .noise_aware import shrink_ddo_mixture
from .predict import Prediction, PredictGuards, predict, prediction_to_mixture
from .sensitivity import SKIPPED_NOISE_UNKNOWN, skip_reason, weight_intervals

logger = logging.getLogger(__name__)

DEFAULT_SENSITIVITY_DRAWS = 100
NOISE_HINT = "repeat the base run over two seeds, or give the relative noise sigma"


@dataclass
class DDOStep:
    """What one DDO step made: the mixture to write, and the pieces behind it."""

    mixture: Mixture
    design: Design
    result: DDOResult


def ddo_step(runs_file: RunsFile, options: DDOOptions, runs_ref: dict, *,
             noise_sigma: Optional[float] = None,
             sensitivity_draws: int = DEFAULT_SENSITIVITY_DRAWS, seed: int = 0,
             noise_aware: bool = True, extra_provenance: Optional[dict] = None,
             source: Optional[str] = None, noise_hint: str = NOISE_HINT,
             where: str = "") -> DDOStep:
    """Fit, solve, attach the sensitivity report and (``noise_aware``) shrink each move by
    its signal-to-noise ratio. ``runs_ref`` is the runs file as the provenance names it
    (``{"path": ..., "sha256": ...}``); ``source`` names it in error messages; ``noise_hint``
    and ``where`` word the warning when the noise is unknown (see ``sensitivity``)."""
    design = build_design(runs_file, options, source=source or str(runs_ref["path"]))
    result = solve_design(design, options)
    provenance = {"runs_file": runs_ref, "metric": options.metric or runs_file.metric,
                  "base_runs": design.base_runs, "failed_runs": design.failed_runs,
                  "eval_set": design.eval_set, **(extra_provenance or {})}
    mixture = result_to_mixture(result, provenance)
    mixture.provenance["sensitivity"] = sensitivity(design, options, noise_sigma,
                                                    sensitivity_draws, seed, noise_hint, where)
    if noise_aware:
        mixture = shrink_ddo_mixture(mixture)
    return DDOStep(mixture, design, result)


def sensitivity(design: Design, options: DDOOptions, noise_sigma: Optional[float],
                draws: int, seed: int, noise_hint: str = NOISE_HINT, where: str = "") -> dict:
    """The mixture's ``provenance.sensitivity``: the report, or why there is none.
    ``noise_hint`` tells the user, in the caller's terms, how to give the noise; ``where``
    prefixes the warning (e.g. the sweep's name)."""
    reason = skip_reason(design, noise_sigma, draws)
    if reason is not None:
        if reason == SKIPPED_NOISE_UNKNOWN:
            logger.warning("%sno repeated runs and no noise sigma given: the noise is unknown, so "
                           "no weight intervals are made; %s", where, noise_hint)
        return {"skipped": reason}
    from tqdm import tqdm

    with tqdm(total=draws, desc="sensitivity", unit="draw", disable=None,
              file=sys.stderr) as bar:
        report = weight_intervals(design, options, noise_sigma, draws=draws, seed=seed,
                                  progress=bar.update)
    return report.to_dict()


def predict_step(mixtures: Sequence[Mixture], inputs: List[dict], guards: PredictGuards, *,
                 target_tokens: Optional[float] = None, steps: Optional[float] = None,
                 noise_aware: bool = True):
    """The prediction at the target and its mixture file; ``inputs`` name the DDO mixtures
    in its provenance. Returns ``(prediction, mixture)``."""
    prediction: Prediction = predict(mixtures, target_tokens=target_tokens, steps=steps,
                                     guards=guards, noise_aware=noise_aware)
    return prediction, prediction_to_mixture(prediction, inputs, guards)
