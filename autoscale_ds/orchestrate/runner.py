"""Run a DDO sweep end to end: lock, plan, skip what is done, execute, solve, write.

Crash safety comes from three rules: results are recorded one row at a time by atomic
rewrites of the runs file; a run whose own result.json exists (it finished but the
orchestrator died before recording it) is recorded without training again; and the
mixture and plots are written atomically only after the last row is in.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

from ..atomic import file_sha256
from ..ddo import DDOOptions, build_design, result_to_mixture, solve_design
from ..errors import InputError
from ..formats import Mixture, runs_from_dict, save_mixture
from .executors import existing_result, make_executor
from .lock import DirectoryLock
from .runs_store import RunsStore
from .sweep import ProxyRun, SweepConfig, plan_sweep

logger = logging.getLogger(__name__)

DEFAULT_SENSITIVITY_DRAWS = 100  # as `autoscale ddo --sensitivity-draws`
RUNS_FILE = "runs.json"
MIXTURE_FILE = "mixture.json"


@dataclass
class SweepResult:
    mixture: Mixture
    mixture_path: Path
    runs_path: Path
    trained: List[str]
    """Run ids trained in this invocation (the rest were already done)."""
    failed: List[str]
    pinned: dict


def run_sweep(config: SweepConfig, executor=None) -> SweepResult:
    out = Path(config.output_dir)
    from ..train.distributed import is_main_process

    lock = DirectoryLock(out).acquire() if is_main_process() else None
    try:
        return _run_locked(config, out, executor or make_executor(config.executor))
    finally:
        if lock is not None:
            lock.release()


def _run_locked(config: SweepConfig, out: Path, executor) -> SweepResult:
    runs = plan_sweep(config)
    store = RunsStore(out / RUNS_FILE, [r.run_id for r in runs])
    pending = _pending(runs, store, config.retry_failed)
    logger.info("sweep %s: %d runs planned, %d to train", out, len(runs), len(pending))
    executor.execute(pending, _recorder(store, out, len(pending)))
    mixture, pinned = _solve(config, out, store, runs)
    failed = [r["id"] for r in store.failed()]
    return SweepResult(mixture, out / MIXTURE_FILE, out / RUNS_FILE,
                       [r.run_id for r in pending], failed, pinned)


def _recorder(store: RunsStore, out: Path, total: int):
    """Record each finished run and log the sweep's progress (proxy runs take minutes each,
    so one line per run is the progress a user watches)."""
    started = time.monotonic()
    finished = 0

    def record(run: ProxyRun, row: dict) -> None:
        nonlocal finished
        store.record(run.run_id, run.key, row)
        finished += 1
        elapsed_s = time.monotonic() - started
        outcome = "ok" if row.get("status") == "ok" else f"FAILED ({row.get('reason', '')[:120]})"
        logger.info("sweep %s: %d/%d runs done (%s: %s), %.0f s elapsed, ~%.0f s left",
                    out.name, finished, total, run.run_id, outcome, elapsed_s,
                    elapsed_s / finished * (total - finished))
    return record


def _pending(runs: List[ProxyRun], store: RunsStore, retry_failed: bool) -> List[ProxyRun]:
    pending = []
    for run in runs:
        if store.done(run.key, retry_failed):
            continue
        finished = existing_result(run)
        if finished is not None and (finished["status"] == "ok" or not retry_failed):
            # It finished (or failed deterministically) but the orchestrator died first.
            logger.info("run %s ended earlier; recording its result without training", run.run_id)
            store.record(run.run_id, run.key, finished)
            continue
        pending.append(run)
    return pending


def ddo_options(config: SweepConfig) -> DDOOptions:
    settings = {k: v for k, v in config.ddo.items() if k not in ("noise_sigma", "sensitivity_draws")}
    settings.setdefault("allow_incomplete", True)  # failed runs must not sink the whole sweep
    try:
        return DDOOptions(**settings)
    except TypeError as exc:
        raise InputError(f"sweep config: ddo: {exc}") from None


def _solve(config: SweepConfig, out: Path, store: RunsStore, runs: List[ProxyRun]):
    rows = store.rows_for([r.key for r in runs])
    runs_file = runs_from_dict({"schema": "autoscale.runs/v1", "metric": "perplexity", "runs": rows},
                               source=str(out / RUNS_FILE))
    options = ddo_options(config)
    design = build_design(runs_file, options, source=str(out / RUNS_FILE))
    result = solve_design(design, options)
    if result.pinned:
        logger.warning("domains kept at their base quantity: %s", result.pinned)
    provenance = {"runs_file": {"path": RUNS_FILE, "sha256": file_sha256(out / RUNS_FILE)},
                  "metric": "perplexity", "base_runs": design.base_runs,
                  "failed_runs": design.failed_runs, "eval_set": design.eval_set,
                  "sweep_budget_tokens": config.budget_tokens}
    mixture = result_to_mixture(result, provenance)
    mixture.provenance["sensitivity"] = _sensitivity(design, options, config)
    save_mixture(out / MIXTURE_FILE, mixture)
    _plots(mixture, out)
    return mixture, result.pinned


def _sensitivity(design, options, config: SweepConfig) -> dict:
    """The mixture's ``provenance.sensitivity``: on by default (100 draws), with the noise
    estimated from the base run repeated over ``seeds`` unless ``ddo.noise_sigma`` is set."""
    from ..sensitivity import SKIPPED_NOISE_UNKNOWN, skip_reason, weight_intervals

    draws = int(config.ddo.get("sensitivity_draws", DEFAULT_SENSITIVITY_DRAWS))
    sigma = config.ddo.get("noise_sigma")
    reason = skip_reason(design, sigma, draws)
    if reason == SKIPPED_NOISE_UNKNOWN:
        logger.warning("sweep %s: no repeated base runs and no ddo.noise_sigma, so the noise is "
                       "unknown and no weight intervals are made; use seeds: [0, 1] or set "
                       "ddo: {noise_sigma: S}", config.output_dir)
    if reason is not None:
        return {"skipped": reason}
    return weight_intervals(design, options, sigma, draws=draws, seed=0).to_dict()


def _plots(mixture: Mixture, out: Path) -> None:
    from ..plots import plot_responses

    plot_responses(mixture, out / "responses.png")

