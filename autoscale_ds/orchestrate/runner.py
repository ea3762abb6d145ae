"""Run a DDO sweep end to end: check, lock, plan, skip what is done, execute, solve, write.

Every setting is checked, and every object the solve needs is built, before the lock is
taken or a run starts: a typo under ``ddo:`` must not cost the sweep's training.

Crash safety comes from three rules: results are recorded one row at a time by atomic
rewrites of the runs file; a run whose own result.json exists (it finished but the
orchestrator died before recording it) is recorded without training again; and the
mixture and plots are written atomically only after the last row is in.
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from ..atomic import file_sha256
from ..errors import InputError
from ..formats.schemas import Mixture, runs_from_dict, save_mixture
from ..lock import DirectoryLock
from ..method.ddo import DDOOptions
from ..method.steps import DEFAULT_SENSITIVITY_DRAWS, ddo_step
from .executors import make_executor
from .runs_store import RunsStore, existing_result
from .settings import ConfigProblems, Problems, output_dir_problem
from .settings import ddo_options as _ddo_options_of
from .sweep import ProxyRun, SweepConfig, plan_sweep
from .wsd import with_parent_or_from_scratch

logger = logging.getLogger(__name__)

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
    runs: List[ProxyRun] = field(default_factory=list)
    """Every run of the sweep's plan, trained now or before."""


@dataclass
class CheckedSweep:
    """What a sweep's settings build, made before its first run."""

    runs: List[ProxyRun]
    options: DDOOptions
    executor: Any


def check_sweep(config: SweepConfig, check_output: bool = True) -> CheckedSweep:
    """Plan the runs, build the DDO options and the executor; every problem found is
    raised at once (ConfigProblems naming the config file and each field)."""
    problems = Problems()
    in_the_way = output_dir_problem(config.output_dir) if check_output else None
    if in_the_way:
        problems.add("output_dir", in_the_way)
    runs = problems.attempt(None, plan_sweep, config)
    options = problems.attempt(None, ddo_options, config)
    domains = config.domains or (list(runs[0].config.tokens_per_domain) if runs else None)
    if domains and options:
        for name in ("ratio_bounds", "available_tokens"):
            for domain in getattr(options, name):
                if domain not in domains:
                    problems.add(f"ddo.{name}.{domain}", f"not a domain of this sweep; domains: "
                                 f"{', '.join(domains)}")
    executor = problems.attempt("executor", _executor, config.executor)
    problems.raise_if_any(config.origin)
    return CheckedSweep(runs, options, executor)


def _executor(spec: dict):
    try:
        return make_executor(spec)
    except TypeError as exc:  # a setting of the wrong type reached the executor's constructor
        raise InputError(str(exc)) from None


def lock_output_dir(out: Path) -> DirectoryLock:
    """The directory's lock, held; an output_dir that cannot be made is an input problem."""
    try:
        return DirectoryLock(out).acquire()
    except OSError as exc:
        raise InputError(f"output_dir {out}: cannot create or lock it "
                         f"({exc.strerror or exc}); choose another output_dir") from None


def run_sweep(config: SweepConfig, executor=None, runs: Optional[List[ProxyRun]] = None) -> SweepResult:
    """Run what is missing of the sweep's plan (or of ``runs``, a plan the caller adjusted:
    the pipeline's WSD families), then solve."""
    return finish_sweep(start_sweep(config, executor, runs))


@dataclass
class StartedSweep:
    """A sweep whose output directory is locked and whose missing runs are handed to the
    executor: submitted already (an executor with ``submit``, SLURM), or to be trained by
    ``finish_sweep``."""

    config: SweepConfig
    out: Path
    executor: Any
    runs: List[ProxyRun]
    store: RunsStore
    pending: List[ProxyRun]
    record: Any
    lock: Optional[DirectoryLock]
    submission: Any = None

    def abandon(self) -> None:
        """Interrupted before ``finish_sweep``: cancel what was submitted, free the lock."""
        try:
            if self.submission is not None:
                self.submission.cancel()
        finally:
            self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def start_sweep(config: SweepConfig, executor=None, runs: Optional[List[ProxyRun]] = None) -> StartedSweep:
    """Check, lock, record what ended earlier, and submit the missing runs where the executor
    queues them (SLURM): the pipeline starts every budget's sweep before waiting on any, so
    a WSD branch can wait for its own parent run, not for the parent's whole sweep."""
    checked = check_sweep(config)
    out = Path(config.output_dir)
    executor = executor or checked.executor
    runs = checked.runs if runs is None else runs
    from ..train.distributed import is_main_process

    lock = lock_output_dir(out) if is_main_process() else None
    started = None
    try:
        store = RunsStore(out / RUNS_FILE, [r.run_id for r in runs])
        pending = [_parent_or_scratch(executor, run)
                   for run in _pending(runs, store, config.retry_failed)]
        logger.info("sweep %s: %d runs planned, %d to train", out, len(runs), len(pending))
        started = StartedSweep(config, out, executor, runs, store, pending,
                               _recorder(store, out, len(pending)), lock)
        if hasattr(executor, "submit"):
            started.submission = executor.submit(pending, started.record)
        return started
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def finish_sweep(started: StartedSweep) -> SweepResult:
    """Wait for (or train) the sweep's missing runs, then solve and write its mixture."""
    try:
        if started.submission is not None:
            started.executor.wait(started.submission)
        else:
            started.executor.execute(started.pending, started.record)
        mixture, pinned = _solve(started.config, started.out, started.store, started.runs)
    finally:
        started.release()
    failed = [r["id"] for r in started.store.failed()]
    return SweepResult(mixture, started.out / MIXTURE_FILE, started.out / RUNS_FILE,
                       [r.run_id for r in started.pending], failed, pinned, list(started.runs))


def _parent_or_scratch(executor, run: ProxyRun) -> ProxyRun:
    """A WSD branch keeps its parent when the parent checkpoint is there, or when the
    executor can make the branch wait for the parent's queued job (SLURM ``--dependency``);
    otherwise it is trained from scratch."""
    waits_for_parent = getattr(executor, "parent_task", None)
    if run.config.branch_from and waits_for_parent is not None and waits_for_parent(run):
        return run
    return with_parent_or_from_scratch(run)


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
    """The sweep's DDOOptions (``allow_incomplete`` defaults to true: failed runs must not
    sink the whole sweep)."""
    try:
        return _ddo_options_of(config.ddo)
    except ConfigProblems as exc:
        raise exc.named(config.origin) from None


def _solve(config: SweepConfig, out: Path, store: RunsStore, runs: List[ProxyRun]):
    rows = store.rows_for([r.key for r in runs])
    runs_file = runs_from_dict({"schema": "autoscale.runs/v1", "metric": "perplexity", "runs": rows},
                               source=str(out / RUNS_FILE))
    step = ddo_step(runs_file, ddo_options(config),
                    {"path": RUNS_FILE, "sha256": file_sha256(out / RUNS_FILE)},
                    source=str(out / RUNS_FILE), noise_sigma=config.ddo.get("noise_sigma"),
                    sensitivity_draws=int(config.ddo.get("sensitivity_draws",
                                                         DEFAULT_SENSITIVITY_DRAWS)),
                    noise_aware=config.ddo.get("noise_aware", True),
                    extra_provenance={"sweep_budget_tokens": config.budget_tokens},
                    noise_hint="use seeds: [0, 1] or set ddo: {noise_sigma: S}",
                    where=f"sweep {config.output_dir}: ")
    if step.result.pinned:
        logger.warning("domains kept at their base quantity: %s", step.result.pinned)
    save_mixture(out / MIXTURE_FILE, step.mixture)
    _plots(step.mixture, out)
    return step.mixture, step.result.pinned


def _plots(mixture: Mixture, out: Path) -> None:
    from ..method.plots import plot_responses

    plot_responses(mixture, out / "responses.png")

