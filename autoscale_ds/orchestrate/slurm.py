"""Proxy runs as one SLURM job array, and the multi-node pretraining job script.

``SlurmExecutor`` renders the packaged ``templates/proxy_array.sbatch`` into
``<sweep>/slurm/proxy_array_<n>.sbatch`` (array task i trains line i of ``runs_<n>.txt``),
submits it with ``sbatch --parsable`` and polls ``squeue``, recording each run as its task
ends: its own ``result.json`` if it wrote one, else a failure row with the task's state, exit
code and log tail. ``squeue`` suffices (a minimal cluster has no accounting database);
``sacct`` is asked only about tasks ``squeue`` has already forgotten.

Restart safety: the tasks are written to ``<sweep>/slurm/active_job`` before waiting. A
restarted orchestrator (after SIGKILL) adopts that job's live tasks whose config is still
wanted, cancels its other live tasks, and submits only the runs no live task covers; runs
that finished meanwhile were recorded from their result.json by the runner. Ctrl-C or
SIGTERM cancels the arrays (``scancel``) before the orchestrator exits.
"""

import importlib.resources
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import InputError
from .executors import existing_result
from .runs_store import failure_row
from .sweep import ProxyRun

logger = logging.getLogger(__name__)

# The directory that holds the autoscale_ds package: a source checkout, site-packages, or a
# `pip install --target` directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# The job templates ship inside the package (launchers/slurm/ links to them), so an installed
# wheel finds them too; read them with importlib.resources, never through the source tree.
TEMPLATES = "templates"
# Megatron-LM's legacy default split, which it applies to --data-path only: a blend read from
# --data-args-path without --split is refused ("split must be provided when blend is not None").
DEFAULT_SPLIT = "969,30,1"
_SPLIT = re.compile(r"\d+(\.\d*)?( *, *\d+(\.\d*)?){0,2}")  # 1 to 3 proportions, as --split takes
ACTIVE_JOB = "active_job"
# Batch jobs may start with a clean environment (--export=NONE): these travel explicitly.
PASSED_ENV = ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR", "HF_HOME", "HF_DATASETS_CACHE",
              "TRANSFORMERS_CACHE", "CUDA_HOME", "VIRTUAL_ENV", "MPLBACKEND")
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
        found = _problems(self, {"gpus_per_run": 0, "cpus_per_run": 1, **throttle})
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
        self.settings = _settings(SlurmSettings, settings, "executor slurm")

    def execute(self, runs: Sequence[ProxyRun], record: Record) -> None:
        if not runs:
            return
        _require_slurm()
        slurm_dir = _slurm_dir(runs)
        watch: Dict[Task, ProxyRun] = {}
        with _cancel_on_interrupt(watch, slurm_dir):
            watch.update(self._adopt(slurm_dir, runs))
            adopted = {run.key for run in watch.values()}
            fresh = [run for run in runs if run.key not in adopted]
            if fresh:
                watch.update(self._submit(slurm_dir, fresh, watch))
            _save_active(slurm_dir, watch)
            self._wait(slurm_dir, watch, record)
        (slurm_dir / ACTIVE_JOB).unlink(missing_ok=True)

    def _adopt(self, slurm_dir: Path, runs: Sequence[ProxyRun]) -> Dict[Task, ProxyRun]:
        """Live tasks of an earlier orchestrator's arrays that train a run still wanted."""
        wanted = {run.key: run for run in runs}
        adopted: Dict[Task, ProxyRun] = {}
        for job_id, tasks in _load_active(slurm_dir).items():
            states = _squeue(job_id)
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
                    _scancel(f"{job_id}_{index}")
        return adopted

    def _submit(self, slurm_dir: Path, runs: Sequence[ProxyRun], adopted) -> Dict[Task, ProxyRun]:
        number = 1 + max((int(p.stem.rsplit("_", 1)[1]) for p in slurm_dir.glob("proxy_array_*.sbatch")),
                         default=-1)
        runs_list = slurm_dir / f"runs_{number}.txt"
        atomic_write_text(runs_list, "".join(f"{run.write_config().resolve()}\n" for run in runs))
        script = slurm_dir / f"proxy_array_{number}.sbatch"
        atomic_write_text(script, self.render(slurm_dir, runs_list, len(runs)))
        # Killed while sbatch runs? The restarted orchestrator finds the job by its script.
        _save_active(slurm_dir, adopted, submitting=(script, runs))
        job_id = _sbatch(script)
        logger.info("submitted %d proxy runs as SLURM array job %s (%s)", len(runs), job_id, script)
        return {(job_id, index): run for index, run in enumerate(runs)}

    def render(self, slurm_dir: Path, runs_list: Path, count: int) -> str:
        s = self.settings
        log_dir, status_dir = slurm_dir / "logs", slurm_dir / "status"
        if re.search(r"\s", str(log_dir)):
            raise InputError(f"SLURM log directory {log_dir} contains whitespace, which #SBATCH "
                             "lines cannot carry; use a sweep output_dir without spaces")
        log_dir.mkdir(parents=True, exist_ok=True)
        status_dir.mkdir(parents=True, exist_ok=True)
        throttle = f"%{s.max_concurrent}" if s.max_concurrent else ""
        return render_template("proxy_array.sbatch", {
            "job_name": s.job_name, "array": f"0-{count - 1}{throttle}", "cpus_per_run": s.cpus_per_run,
            "log_dir": log_dir, "gpus_per_run": s.gpus_per_run,
            "sbatch_options": sbatch_lines(s.partition, s.time, s.gpus_per_run, s.mem, s.extra_sbatch),
            "runs_list": shlex.quote(str(runs_list)), "status_dir": shlex.quote(str(status_dir)),
            "python": shlex.quote(s.python), "environment": environment_exports(s.python, s.env)},
            s.template)

    def _wait(self, slurm_dir: Path, watch: Dict[Task, ProxyRun], record: Record) -> None:
        ended: Dict[Task, Tuple[float, Optional[str]]] = {}  # ended, result not visible yet
        while watch:
            for job_id in sorted({job for job, _ in watch}):
                states = _squeue(job_id)
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
                    record(run, row or _failure(slurm_dir, task, run, state))
            if watch:
                time.sleep(self.settings.poll_seconds)


# --- settings and rendering, shared with the pretraining job ----------------------------------

def _settings(kind, settings: dict, owner: str):
    known = [f.name for f in fields(kind)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise InputError(f"{owner}: unknown setting(s) {unknown}; known: {known}")
    value = kind(**settings)
    problems = value.problems()
    if problems:
        raise InputError(f"{owner}:\n  - " + "\n  - ".join(problems))
    return value


def _problems(settings, minimums: Dict[str, int]) -> List[str]:
    """Whole-number minimums, and the extra_sbatch and env every settings class has."""
    found = [f"{name} must be a whole number >= {low}, got {getattr(settings, name)!r}"
             for name, low in minimums.items() if isinstance(getattr(settings, name), bool)
             or not isinstance(getattr(settings, name), int) or getattr(settings, name) < low]
    options, env = settings.extra_sbatch, settings.env
    if not (isinstance(options, (list, tuple)) and all(
            isinstance(o, str) and o.startswith("-") and "\n" not in o for o in options)):
        found.append(f"extra_sbatch must be a list of sbatch options like '--account=proj', got {options!r}")
    if not (isinstance(env, dict) and all(re.fullmatch(r"[A-Za-z_]\w*", str(k)) for k in env)):
        found.append(f"env must map variable names to values, got {env!r}")
    return found


def template_text(name: str, path=None) -> Tuple[str, str]:
    """(label for messages, text) of the template file ``path``, or of the packaged ``name``."""
    if path is None:
        resource = importlib.resources.files(__package__).joinpath(TEMPLATES, name)
        return f"packaged template {name}", resource.read_text(encoding="utf-8")
    try:
        return str(path), Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"SLURM template {path}: cannot read ({exc.strerror or exc}); the "
                         f"`template` setting names a customised copy of {name}, or leave it "
                         "out to use the packaged one") from None


def render_template(name: str, values: Dict[str, object], path=None) -> str:
    """Fill the ``{{name}}`` placeholders (bash's own ``${...}`` stays untouched) of the
    template file ``path``, or of the packaged template ``name``."""
    path, text = template_text(name, path)

    def fill(match):
        if match.group(1) not in values:
            raise InputError(f"SLURM template {path}: unknown placeholder {match.group(0)}")
        return str(values[match.group(1)])
    return re.sub(r"\{\{(\w+)\}\}", fill, text)


def sbatch_lines(partition=None, time_limit=None, gpus=0, mem=None, extra: Sequence[str] = ()) -> str:
    lines = [f"--partition={partition}" if partition else "", f"--time={time_limit}" if time_limit else "",
             f"--gres=gpu:{gpus}" if gpus else "", f"--mem={mem}" if mem else "", *extra]
    return "\n".join(f"#SBATCH {line}" for line in lines if line)


def environment_exports(python: str, extra: Optional[Dict[str, str]] = None) -> str:
    """``export`` lines giving a batch job this process's package, venv tools and caches."""
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # A source checkout must win over other copies; a site-packages dir must not precede the
    # standard library, so that one is left to the interpreter.
    if not re.search(r"(site|dist)-packages", str(PACKAGE_PARENT)):
        paths.insert(0, str(PACKAGE_PARENT))
    lines = [f"export PYTHONPATH={shlex.quote(os.pathsep.join(dict.fromkeys(paths)))}"] if paths else []
    # The venv's bin first: DeepSpeed's JIT builds call ninja from PATH.
    lines.append(f'export PATH={shlex.quote(os.path.dirname(python))}"${{PATH:+:$PATH}}"')
    passed = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    for name, value in {**passed, **(extra or {})}.items():
        lines.append(f"export {name}={shlex.quote(str(value))}")
    return "\n".join(lines)


# --- talking to SLURM ---------------------------------------------------------------------------

def _require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
    if missing:
        raise InputError(f"executor slurm: {', '.join(missing)} not found on PATH; run the sweep "
                         "where the SLURM client tools are installed (a login node), or use "
                         "executor kind 'local'")


def _slurm_dir(runs: Sequence[ProxyRun]) -> Path:
    # plan_sweep puts run outputs at <sweep>/runs/<id>; the array's files go to <sweep>/slurm.
    parents = {run.output_dir.resolve().parent for run in runs}
    parent = parents.pop() if len(parents) == 1 else Path(os.path.commonpath(list(parents)))
    return (parent.parent if parent.name == "runs" else parent) / "slurm"


def _slurm(command: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


def _sbatch(script: Path) -> str:
    done = _slurm(["sbatch", "--parsable", str(script)])
    job_id = done.stdout.strip().split(";")[0]
    if done.returncode != 0 or not job_id.isdigit():
        raise InputError(f"sbatch {script} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()}")
    return job_id


def _squeue(job_id: str) -> Optional[Dict[int, str]]:
    """State per array index ({} once SLURM has forgotten the job); None: cannot tell now."""
    done = _slurm(["squeue", "--jobs", job_id, "--states=all", "--array", "--noheader",
                   "--format=%i|%T"])
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return {}
        logger.warning("squeue for job %s failed (will retry): %s", job_id, done.stderr.strip())
        return None
    states: Dict[int, str] = {}
    for line in done.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        job, _, indices = task.partition("_")
        if job == job_id:
            states.update({index: state for index in _indices(indices)})
    return states


def _indices(spec: str) -> List[int]:
    """Array indices of squeue's task field: ``3``, or a pending range ``[4-7%2]``/``[1,3]``."""
    indices: List[int] = []
    for part in filter(None, spec.strip("[]").split("%")[0].split(",")):
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            indices.extend(range(int(low), int(high or low) + 1))
    return indices


def _job_of_script(script: str) -> Optional[str]:
    done = _slurm(["squeue", "--me", "--states=all", "--noheader", "--format=%F|%o"])
    jobs = [line.split("|", 1)[0] for line in done.stdout.splitlines() if line.endswith(f"|{script}")]
    return jobs[0] if done.returncode == 0 and jobs else None


def _sacct_state(task: str) -> Optional[str]:
    # Only clusters with accounting storage answer; a minimal one does not, and that is fine.
    done = _slurm(["sacct", "--jobs", task, "--noheader", "--parsable2", "--allocations",
                   "--format=State,ExitCode"])
    lines = done.stdout.split()
    return lines[0].replace("|", " exit ") if done.returncode == 0 and lines else None


def _scancel(target: str) -> None:
    done = _slurm(["scancel", target])
    if done.returncode != 0:
        logger.warning("scancel %s failed: %s", target, done.stderr.strip())


# --- task outcomes and the active-job file ----------------------------------------------------

def _exit_code(slurm_dir: Path, task: Task) -> Optional[str]:
    path = slurm_dir / "status" / f"{task[0]}_{task[1]}.exit"
    return path.read_text().strip() if path.exists() else None


def _expects_result(slurm_dir: Path, task: Task, state: Optional[str]) -> bool:
    """Exit 0 or 3 (a recorded training failure): the trainer wrote result.json."""
    code = _exit_code(slurm_dir, task)
    return code in ("0", "3") or (code is None and state in (None, "COMPLETED"))


def _failure(slurm_dir: Path, task: Task, run: ProxyRun, state: Optional[str]) -> dict:
    name = f"{task[0]}_{task[1]}"
    state = state or _sacct_state(name) or "no longer listed by squeue"
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
        job_id = _job_of_script(pending["script"]) if pending else None
        if job_id:
            jobs[job_id] = {int(i): str(key) for i, key in pending["tasks"].items()}
        return jobs
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise InputError(f"{path} is damaged ({exc}); cancel that sweep's SLURM jobs and remove it") from None


def _save_active(slurm_dir: Path, watch: Dict[Task, ProxyRun], submitting=None) -> None:
    jobs: Dict[str, Dict[str, str]] = {}
    for (job_id, index), run in sorted(watch.items()):
        jobs.setdefault(job_id, {})[str(index)] = run.key
    payload: dict = {"jobs": jobs}
    if submitting:
        script, runs = submitting
        payload["submitting"] = {"script": str(script), "tasks": {str(i): r.key for i, r in enumerate(runs)}}
    atomic_write_json(slurm_dir / ACTIVE_JOB, payload)


@contextmanager
def _cancel_on_interrupt(watch: Dict[Task, ProxyRun], slurm_dir: Path):
    """Ctrl-C or SIGTERM: cancel the arrays (else they train on for nobody), then re-raise."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: only Ctrl-C reaches us
        pass
    try:
        yield
    except KeyboardInterrupt:
        jobs = sorted({job for job, _ in watch})
        logger.warning("interrupted: cancelling SLURM job(s) %s", ", ".join(jobs) or "(none)")
        for job_id in jobs:
            _scancel(job_id)
        (slurm_dir / ACTIVE_JOB).unlink(missing_ok=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --- the multi-node pretraining job -----------------------------------------------------------

@dataclass
class PretrainJob:
    """Settings of the packaged ``pretrain_multinode.sbatch``; its header explains each."""
    mode: str = "megatron"  # megatron or autoscale
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_node: int = 32
    partition: Optional[str] = None
    time: Optional[str] = None
    job_name: str = "autoscale-pretrain"
    log_dir: str = "logs"
    master_port: Optional[int] = None  # default: derived from the job id
    megatron_dir: str = ""
    megatron_args: str = ""
    data_args_path: str = ""
    split: str = DEFAULT_SPLIT  # --split for the blend, unless megatron_args gives one
    train_config: str = ""
    mixture: str = ""
    repo_dir: str = ""  # a checkout put first on PYTHONPATH; default: the package this runs
    python: str = sys.executable
    env: Dict[str, str] = field(default_factory=dict)
    extra_sbatch: List[str] = field(default_factory=list)

    def problems(self) -> List[str]:
        found = _problems(self, {"nodes": 1, "gpus_per_node": 0, "cpus_per_node": 1})
        if self.mode not in ("megatron", "autoscale"):
            found.append(f"mode must be megatron or autoscale, got {self.mode!r}")
        needed = ("megatron_dir", "data_args_path") if self.mode == "megatron" else ("train_config",)
        found += [f"mode {self.mode} needs {name}" for name in needed if not getattr(self, name)]
        if not (isinstance(self.split, str) and _SPLIT.fullmatch(self.split)):
            found.append(f"split must be 1 to 3 comma-separated proportions like '969,30,1' "
                         f"(Megatron's --split), got {self.split!r}")
        if re.search(r"\s", str(self.log_dir)):
            found.append(f"log_dir {self.log_dir!r} contains whitespace, which #SBATCH lines cannot carry")
        return found


def render_pretrain_script(template: Optional[str] = None, **settings) -> str:
    """The pretraining job script for ``settings`` (the fields of :class:`PretrainJob`);
    ``template``: a customised copy (default: the packaged ``pretrain_multinode.sbatch``)."""
    job = _settings(PretrainJob, settings, "pretrain job")
    quoted = {name: shlex.quote(str(getattr(job, name))) for name in (
        "mode", "megatron_dir", "megatron_args", "data_args_path", "split", "train_config",
        "mixture", "repo_dir", "python")}
    return render_template("pretrain_multinode.sbatch", {
        **quoted, "job_name": job.job_name, "nodes": job.nodes, "gpus_per_node": job.gpus_per_node,
        "cpus_per_node": job.cpus_per_node, "log_dir": job.log_dir, "master_port": job.master_port or "",
        "sbatch_options": sbatch_lines(job.partition, job.time, job.gpus_per_node, None, job.extra_sbatch),
        "environment": environment_exports(job.python, job.env)}, template)


def write_pretrain_script(path, template: Optional[str] = None, **settings) -> Path:
    """Render the pretraining job script to ``path`` (executable); submit it with sbatch.

    Its log goes to ``log_dir`` (default: ``logs/`` beside the script), created here: SLURM
    does not create it, and a job whose log directory is missing fails without a word."""
    settings.setdefault("log_dir", str(Path(path).resolve().parent / "logs"))
    Path(settings["log_dir"]).mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(path, render_pretrain_script(template, **settings))
    path.chmod(0o755)
    return path
