"""Proxy runs as one SLURM job array, and the multi-node pretraining job script.

``SlurmExecutor`` renders the packaged ``templates/proxy_array.sbatch`` into
``<sweep>/slurm/proxy_array_<n>.sbatch`` (array task i trains line i of ``runs_<n>.txt``),
submits it with ``sbatch --parsable`` and polls ``squeue``, recording each run as its task
ends: its own ``result.json`` if it wrote one, else a failure row with the task's state, exit
code and log tail. ``squeue`` suffices (a minimal cluster has no accounting database);
``sacct`` is asked only about tasks ``squeue`` has already forgotten.

WSD branches: the pipeline submits every budget's sweep before waiting on any. A branch
whose parent run is still queued or running in the parent sweep's array (its active-job
file names each task's run) is submitted as its own job with ``--dependency=afterany:`` on
that one task, so it starts as soon as its parent ends, not after the parent's whole sweep.
If the parent left no checkpoint (it failed, or was cancelled), the branch ends without a
result and is submitted again, trained from scratch: recomputed, never skipped.

Restart safety: the tasks are written to ``<sweep>/slurm/active_job`` before waiting. A
restarted orchestrator (after SIGKILL) adopts that job's live tasks whose config is still
wanted, cancels its other live tasks, and submits only the runs no live task covers; runs
that finished meanwhile were recorded from their result.json by the runner. Ctrl-C or
SIGTERM cancels the arrays (``scancel``) before the orchestrator exits.
"""
import json
import logging
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import EXIT_RUN_FAILED, InputError
from .interrupts import sigterm_as_interrupt
from .runs_store import existing_result, failure_row
from .slurm_client import job_of_script, require_slurm, sacct_state, sbatch, scancel, squeue
from .slurm_render import (checked_settings, common_problems, environment_exports,
                           render_template, sbatch_lines)
from .sweep import ProxyRun
from .wsd import with_parent_or_from_scratch

logger = logging.getLogger(__name__)

ACTIVE_JOB = "active_job"
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
          "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
_LOG_TAIL_CHARS = 2000
_RESULT_GRACE_S = 20.0  # a shared filesystem may show a compute node's new file late

Task = Tuple[str, int]  # (array job id, array index)
Record = Callable[[ProxyRun, dict], None]


@dataclass
class SlurmSettings:
    """The keys of a sweep's ``executor: {kind: slurm, ...}``."""
    partition: Optional[str] = None   # default: the cluster's default partition
    time: Optional[str] = None        # per run, e.g. "01:00:00"; default: the partition's limit
    gpus_per_run: int = 0             # > 1: torchrun with one process per GPU
    cpus_per_run: int = 1
    mem: Optional[str] = None         # per run, e.g. "16G"; default: the cluster's
    max_concurrent: Optional[int] = None  # array throttle (--array=0-N%K); default: no limit
    poll_seconds: float = 10.0
    extra_sbatch: List[str] = field(default_factory=list)  # e.g. ["--account=proj", "--qos=low"]
    job_name: str = "autoscale-proxy"
    python: str = sys.executable      # interpreter on the compute nodes
    env: Dict[str, str] = field(default_factory=dict)  # more variables to export to the runs
    template: Optional[str] = None    # a customised copy; default: the packaged proxy_array.sbatch

    def problems(self) -> List[str]:
        throttle = {} if self.max_concurrent is None else {"max_concurrent": 1}
        found = common_problems(self, {"gpus_per_run": 0, "cpus_per_run": 1, **throttle})
        if not (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds > 0):
            found.append(f"poll_seconds must be > 0, got {self.poll_seconds!r}")
        if self.template is not None and not (isinstance(self.template, (str, os.PathLike))
                                              and os.path.isfile(self.template)
                                              and os.access(self.template, os.R_OK)):
            found.append(f"template {self.template!r} is not a readable file; name a customised copy "
                         "of proxy_array.sbatch, or leave template out to use the packaged one")
        return found


class SlurmExecutor:
    """Executor ``kind: slurm``: one job array per submission, see the module docstring."""

    def __init__(self, **settings):
        self.settings = checked_settings(SlurmSettings, settings, "executor slurm")

    def execute(self, runs: Sequence[ProxyRun], record: Record) -> None:
        self.wait(self.submit(runs, record))

    def submit(self, runs: Sequence[ProxyRun], record: Record) -> Optional["Submission"]:
        """Adopt the live tasks of an earlier orchestrator, submit the rest; ``wait`` records
        them. A WSD branch whose parent run is still queued or running (see ``parent_task``)
        is its own job, ``--dependency=afterany`` on the parent's task."""
        if not runs:
            return None
        require_slurm()
        slurm_dir = _slurm_dir(runs)
        submission = Submission(slurm_dir, {}, record)
        with _cancel_on_interrupt(submission.watch, slurm_dir):
            submission.watch.update(self._adopt(slurm_dir, runs))
            adopted = {run.key for run in submission.watch.values()}
            fresh = [run for run in runs if run.key not in adopted]
            if fresh:
                self._submit(slurm_dir, fresh, submission.watch)
            _save_active(slurm_dir, submission.watch)
        return submission

    def wait(self, submission: Optional["Submission"]) -> None:
        if submission is None:
            return
        with _cancel_on_interrupt(submission.watch, submission.slurm_dir):
            self._wait(submission)
        (submission.slurm_dir / ACTIVE_JOB).unlink(missing_ok=True)

    def parent_task(self, run: ProxyRun) -> Optional[str]:
        """``<job>_<index>`` of the live array task that trains this WSD branch's parent run
        (from the parent sweep's active-job file), or None: no parent, or it has ended."""
        branch = run.config.branch_from
        if not branch:
            return None
        parent_dir = Path(branch["checkpoint_dir"]).resolve().parent
        tasks = _active_outputs(_slurm_dir_of(parent_dir))
        for (job_id, index), output_dir in tasks.items():
            if Path(output_dir).resolve() == parent_dir:
                state = (squeue(job_id) or {}).get(index)
                return f"{job_id}_{index}" if state is not None and state not in _ENDED else None
        return None

    def _adopt(self, slurm_dir: Path, runs: Sequence[ProxyRun]) -> Dict[Task, ProxyRun]:
        """Live tasks of an earlier orchestrator's arrays that train a run still wanted."""
        wanted = {run.key: run for run in runs}
        adopted: Dict[Task, ProxyRun] = {}
        for job_id, tasks in _load_active(slurm_dir).items():
            states = squeue(job_id)
            if states is None:
                raise InputError(f"squeue cannot tell whether job {job_id} (in {slurm_dir / ACTIVE_JOB}) "
                                 "still runs; rerun when the SLURM controller answers")
            for index, key in tasks.items():
                state = states.get(index)
                if state is None or state in _ENDED:
                    continue  # its result was recorded by the runner, or the run is submitted anew
                if key in wanted:
                    logger.info("run %s: re-attached to task %s_%d (%s)", wanted[key].run_id, job_id, index, state)
                    adopted[(job_id, index)] = wanted.pop(key)
                else:  # a config no longer planned, or covered twice: it must not race a new task
                    scancel(f"{job_id}_{index}")
        return adopted

    def _submit(self, slurm_dir: Path, runs: Sequence[ProxyRun], watch: Dict[Task, ProxyRun]) -> None:
        """One array for the runs that can start now, one job per branch that waits for its
        parent; ``watch`` gains every task as it is submitted."""
        waiting = {run.key: self.parent_task(run) for run in runs}
        ready = [run for run in runs if not waiting[run.key]]
        if ready:
            watch.update(self._submit_array(slurm_dir, ready, watch))
        for run in runs:
            if waiting[run.key]:
                watch.update(self._submit_array(slurm_dir, [run], watch,
                                                dependency=f"afterany:{waiting[run.key]}"))

    def _submit_array(self, slurm_dir: Path, runs: Sequence[ProxyRun], watch: Dict[Task, ProxyRun],
                      dependency: Optional[str] = None) -> Dict[Task, ProxyRun]:
        number = 1 + max((int(p.stem.rsplit("_", 1)[1]) for p in slurm_dir.glob("proxy_array_*.sbatch")),
                         default=-1)
        runs_list = slurm_dir / f"runs_{number}.txt"
        atomic_write_text(runs_list, "".join(f"{run.write_config().resolve()}\n" for run in runs))
        script = slurm_dir / f"proxy_array_{number}.sbatch"
        atomic_write_text(script, self.render(slurm_dir, runs_list, len(runs), dependency))
        # Killed while sbatch runs? The restarted orchestrator finds the job by its script.
        _save_active(slurm_dir, watch, submitting=(script, runs))
        job_id = sbatch(script)
        after = f" after {dependency.split(':', 1)[1]}" if dependency else ""
        logger.info("submitted %d proxy run(s) as SLURM array job %s%s (%s)", len(runs), job_id,
                    after, script)
        submitted = {(job_id, index): run for index, run in enumerate(runs)}
        _save_active(slurm_dir, {**watch, **submitted})
        return submitted

    def render(self, slurm_dir: Path, runs_list: Path, count: int,
               dependency: Optional[str] = None) -> str:
        s = self.settings
        log_dir, status_dir = slurm_dir / "logs", slurm_dir / "status"
        if re.search(r"\s", str(log_dir)):
            raise InputError(f"SLURM log directory {log_dir} contains whitespace, which #SBATCH "
                             "lines cannot carry; use a sweep output_dir without spaces")
        log_dir.mkdir(parents=True, exist_ok=True)
        status_dir.mkdir(parents=True, exist_ok=True)
        throttle = f"%{s.max_concurrent}" if s.max_concurrent else ""
        extra = [*s.extra_sbatch, *([f"--dependency={dependency}"] if dependency else [])]
        return render_template("proxy_array.sbatch", {
            "job_name": s.job_name, "array": f"0-{count - 1}{throttle}", "cpus_per_run": s.cpus_per_run,
            "log_dir": log_dir, "gpus_per_run": s.gpus_per_run,
            "sbatch_options": sbatch_lines(s.partition, s.time, s.gpus_per_run, s.mem, extra),
            "runs_list": shlex.quote(str(runs_list)), "status_dir": shlex.quote(str(status_dir)),
            "python": shlex.quote(s.python), "environment": environment_exports(s.python, s.env)},
            s.template)

    def _wait(self, submission: "Submission") -> None:
        slurm_dir, watch = submission.slurm_dir, submission.watch
        ended: Dict[Task, Tuple[float, Optional[str]]] = {}  # ended, result not visible yet
        while watch:
            for job_id in sorted({job for job, _ in watch}):
                states = squeue(job_id)
                if states is None:
                    continue  # controller busy or restarting: ask again next time
                for task in [t for t in watch if t[0] == job_id]:
                    state = states.get(task[1])
                    if state is not None and state not in _ENDED:
                        continue
                    since, state = ended.setdefault(task, (time.monotonic(), state))
                    row = existing_result(watch[task])
                    if row is None and _expects_result(slurm_dir, task, state) \
                            and time.monotonic() - since < _RESULT_GRACE_S:
                        continue
                    run = watch.pop(task)
                    if row is None and self._retrain_from_scratch(run):
                        self._submit(slurm_dir, [run], watch)
                        _save_active(slurm_dir, watch)
                        continue
                    submission.record(run, row or _failure(slurm_dir, task, run, state))
            if watch:
                time.sleep(self.settings.poll_seconds)

    @staticmethod
    def _retrain_from_scratch(run: ProxyRun) -> bool:
        """A branch that ended without a result because its parent left no checkpoint (the
        parent failed or was cancelled) is trained again from scratch, never skipped."""
        if not run.config.branch_from:
            return False
        return with_parent_or_from_scratch(run).config.branch_from is None


@dataclass
class Submission:
    """The tasks one ``submit`` handed to SLURM, until ``wait`` has recorded them all."""
    slurm_dir: Path
    watch: Dict[Task, ProxyRun]
    record: Record

    def cancel(self) -> None:
        for job_id in sorted({job for job, _ in self.watch}):
            scancel(job_id)
        (self.slurm_dir / ACTIVE_JOB).unlink(missing_ok=True)


def _slurm_dir(runs: Sequence[ProxyRun]) -> Path:
    parents = {run.output_dir.resolve().parent for run in runs}
    parent = parents.pop() if len(parents) == 1 else Path(os.path.commonpath(list(parents)))
    return _slurm_dir_of(parent / "run")


def _slurm_dir_of(run_output_dir: Path) -> Path:
    # plan_sweep puts run outputs at <sweep>/runs/<id>; the array's files go to <sweep>/slurm.
    parent = run_output_dir.parent
    return (parent.parent if parent.name == "runs" else parent) / "slurm"

# --- task outcomes and the active-job file ----------------------------------------------------

def _exit_code(slurm_dir: Path, task: Task) -> Optional[str]:
    path = slurm_dir / "status" / f"{task[0]}_{task[1]}.exit"
    return path.read_text().strip() if path.exists() else None


def _expects_result(slurm_dir: Path, task: Task, state: Optional[str]) -> bool:
    """Exit 0 or 3 (a recorded training failure): the trainer wrote result.json."""
    code = _exit_code(slurm_dir, task)
    return code in ("0", str(EXIT_RUN_FAILED)) or (code is None and state in (None, "COMPLETED"))


def _failure(slurm_dir: Path, task: Task, run: ProxyRun, state: Optional[str]) -> dict:
    name = f"{task[0]}_{task[1]}"
    state = state or sacct_state(name) or "no longer listed by squeue"
    code = _exit_code(slurm_dir, task)
    log = slurm_dir / "logs" / f"{name}.log"
    tail = log.read_text(errors="replace")[-_LOG_TAIL_CHARS:] if log.exists() else "(no log)"
    reason = (f"SLURM task {name} ended {state}" + (f" with exit code {code}" if code else "")
              + f" without a result; log {log} tail: {tail}")
    logger.warning("run %s: %s", run.run_id, reason)
    return failure_row(run.run_id, dict(run.config.tokens_per_domain), reason, run.config.seed)


def _load_active(slurm_dir: Path) -> Dict[str, Dict[int, str]]:
    """{job id: {array index: run key}} of the arrays an earlier orchestrator submitted."""
    path = slurm_dir / ACTIVE_JOB
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        jobs = {str(job): {int(i): str(key) for i, key in tasks.items()} for job, tasks in payload["jobs"].items()}
        pending = payload.get("submitting")
        job_id = job_of_script(pending["script"]) if pending else None
        if job_id:
            jobs[job_id] = {int(i): str(key) for i, key in pending["tasks"].items()}
        return jobs
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise InputError(f"{path} is damaged ({exc}); cancel that sweep's SLURM jobs and remove it") from None


def _active_outputs(slurm_dir: Path) -> Dict[Task, str]:
    """{(job id, array index): run output dir} of the tasks in a sweep's active-job file
    (what a WSD branch's sweep reads to find its parent's task); {} when there is none."""
    try:
        payload = json.loads((slurm_dir / ACTIVE_JOB).read_text(encoding="utf-8"))
        return {(str(job), int(i)): str(out) for job, tasks in payload.get("outputs", {}).items()
                for i, out in tasks.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # no parent task to wait for: the branch falls back to the checkpoint rule


def _save_active(slurm_dir: Path, watch: Dict[Task, ProxyRun], submitting=None) -> None:
    jobs: Dict[str, Dict[str, str]] = {}
    outputs: Dict[str, Dict[str, str]] = {}
    for (job_id, index), run in sorted(watch.items()):
        jobs.setdefault(job_id, {})[str(index)] = run.key
        outputs.setdefault(job_id, {})[str(index)] = str(run.output_dir.resolve())
    payload: dict = {"jobs": jobs, "outputs": outputs}
    if submitting:
        script, runs = submitting
        payload["submitting"] = {"script": str(script), "tasks": {str(i): r.key for i, r in enumerate(runs)}}
    atomic_write_json(slurm_dir / ACTIVE_JOB, payload)


@contextmanager
def _cancel_on_interrupt(watch: Dict[Task, ProxyRun], slurm_dir: Path):
    """Ctrl-C or SIGTERM: cancel the arrays (else they train on for nobody), then re-raise."""
    with sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt:
            jobs = sorted({job for job, _ in watch})
            logger.warning("interrupted: cancelling SLURM job(s) %s", ", ".join(jobs) or "(none)")
            for job_id in jobs:
                scancel(job_id)
            (slurm_dir / ACTIVE_JOB).unlink(missing_ok=True)
            raise
