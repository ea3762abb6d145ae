"""The multi-node pretraining job: the packaged ``pretrain_multinode.sbatch`` rendered for
Megatron-LM (``mode: megatron``, the mixture as ``--data-args-path``) or for this package's
own trainer (``mode: autoscale``)."""

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..atomic import atomic_write_text
from .slurm_render import (checked_settings, common_problems, environment_exports,
                           render_template, sbatch_lines)

# Megatron-LM's legacy default split, which it applies to --data-path only: a blend read from
# --data-args-path without --split is refused ("split must be provided when blend is not None").
DEFAULT_SPLIT = "969,30,1"
_SPLIT = re.compile(r"\d+(\.\d*)?( *, *\d+(\.\d*)?){0,2}")  # 1 to 3 proportions, as --split takes


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
        found = common_problems(self, {"nodes": 1, "gpus_per_node": 0, "cpus_per_node": 1})
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
    job = checked_settings(PretrainJob, settings, "pretrain job")
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
