"""The SLURM command client: sbatch, squeue, sacct and scancel, each one call with a timeout.

Failures come back as values (None, a warning) where the caller can ask again later: a busy
or restarting controller must not end a sweep that has hours of jobs in flight.
"""

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import InputError

logger = logging.getLogger(__name__)


def require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
    if missing:
        raise InputError(f"executor slurm: {', '.join(missing)} not found on PATH; run the sweep "
                         "where the SLURM client tools are installed (a login node), or use "
                         "executor kind 'local'")


def run_slurm(command: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


def sbatch(script: Path) -> str:
    done = run_slurm(["sbatch", "--parsable", str(script)])
    job_id = done.stdout.strip().split(";")[0]
    if done.returncode != 0 or not job_id.isdigit():
        raise InputError(f"sbatch {script} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()}")
    return job_id


def squeue(job_id: str) -> Optional[Dict[int, str]]:
    """State per array index ({} once SLURM has forgotten the job); None: cannot tell now."""
    done = run_slurm(["squeue", "--jobs", job_id, "--states=all", "--array", "--noheader",
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
            states.update({index: state for index in array_indices(indices)})
    return states


def array_indices(spec: str) -> List[int]:
    """Array indices of squeue's task field: ``3``, or a pending range ``[4-7%2]``/``[1,3]``."""
    indices: List[int] = []
    for part in filter(None, spec.strip("[]").split("%")[0].split(",")):
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            indices.extend(range(int(low), int(high or low) + 1))
    return indices


def job_of_script(script: str) -> Optional[str]:
    done = run_slurm(["squeue", "--me", "--states=all", "--noheader", "--format=%F|%o"])
    jobs = [line.split("|", 1)[0] for line in done.stdout.splitlines() if line.endswith(f"|{script}")]
    return jobs[0] if done.returncode == 0 and jobs else None


def sacct_state(task: str) -> Optional[str]:
    # Only clusters with accounting storage answer; a minimal one does not, and that is fine.
    done = run_slurm(["sacct", "--jobs", task, "--noheader", "--parsable2", "--allocations",
                   "--format=State,ExitCode"])
    lines = done.stdout.split()
    return lines[0].replace("|", " exit ") if done.returncode == 0 and lines else None


def scancel(target: str) -> None:
    done = run_slurm(["scancel", target])
    if done.returncode != 0:
        logger.warning("scancel %s failed: %s", target, done.stderr.strip())
