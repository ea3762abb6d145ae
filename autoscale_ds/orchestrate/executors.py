"""Ways to execute proxy runs. Each calls ``record(run, row)`` once per finished run.

- ``InProcessExecutor``: one after the other in this process (all ranks of a ``deepspeed``
  launch train each run together; rank 0 records).
- ``LocalProcessExecutor``: K concurrent worker processes, each pinned to its own GPUs
  (``CUDA_VISIBLE_DEVICES``) or its own CPU cores (affinity + thread count).
- ``SlurmExecutor`` (see :mod:`autoscale_ds.orchestrate.slurm`): a job array.

A run that ends without a result of its own (crash, kill, OOM) is recorded as failed with
the reason; the sweep goes on.
"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import InputError
from .runs_store import failure_row
from .sweep import ProxyRun

logger = logging.getLogger(__name__)

Record = Callable[[ProxyRun, dict], None]
_POLL_SECONDS = 0.2
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_STDERR_TAIL_CHARS = 2000


def existing_result(run: ProxyRun) -> Optional[dict]:
    """The run's own result row if it finished under exactly this config, else None."""
    path = run.output_dir / "result.json"
    try:
        row = json.loads(path.read_text(encoding="utf-8"))["runs"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return row if row.get("config_fingerprint") == run.key else None


def _planned_tokens(run: ProxyRun) -> dict:
    return dict(run.config.tokens_per_domain)


class InProcessExecutor:
    def execute(self, runs: Sequence[ProxyRun], record: Record) -> None:
        from ..train.distributed import is_main_process
        from ..train.trainer import Trainer

        for run in runs:
            logger.info("run %s: training in this process", run.run_id)
            try:
                row = Trainer(run.config).run()
            except InputError as exc:  # e.g. a budget the data cannot serve: rerunning won't help
                row = failure_row(run.run_id, _planned_tokens(run), f"bad input: {exc}",
                                  run.config.seed, kind="input")
            except Exception as exc:  # a dying proxy is a recorded result, not the sweep's end
                logger.exception("run %s crashed", run.run_id)
                row = failure_row(run.run_id, _planned_tokens(run), f"crashed: {exc!r}", run.config.seed)
            if is_main_process():
                record(run, row)


class LocalProcessExecutor:
    def __init__(self, workers: int = 1, gpus_per_worker: int = 0, cpus_per_worker: Optional[int] = None):
        if workers < 1:
            raise InputError(f"executor workers must be >= 1, got {workers}")
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker or max(1, (os.cpu_count() or 1) // workers)

    def execute(self, runs: Sequence[ProxyRun], record: Record) -> None:
        queue: List[ProxyRun] = list(runs)
        active = {}  # slot -> (run, process, log path)
        while queue or active:
            for slot in range(self.workers):
                if slot not in active and queue:
                    run = queue.pop(0)
                    active[slot] = (run, *self._start(run, slot))
            time.sleep(_POLL_SECONDS)
            for slot, (run, process, log_path) in list(active.items()):
                if process.poll() is not None:
                    del active[slot]
                    record(run, self._row(run, process.returncode, log_path))

    def _start(self, run: ProxyRun, slot: int):
        config_path = run.write_config()
        log_path = run.output_dir / "train.log"
        # Never inherit an outer launch's rank layout: each worker is its own job.
        env = {k: v for k, v in os.environ.items() if k not in _RANK_VARIABLES}
        env.update(self._placement_env(slot))
        command = self._command(config_path)
        logger.info("run %s: started on worker %d", run.run_id, slot)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=self._pin(slot))
        return process, log_path

    def _command(self, config_path: Path) -> List[str]:
        launch = ["-m", "autoscale_ds.train.launch", "--config", str(config_path)]
        if self.gpus_per_worker > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.gpus_per_worker}", *launch]
        return [sys.executable, *launch]

    def _placement_env(self, slot: int) -> dict:
        env = {"OMP_NUM_THREADS": str(self.cpus_per_worker)}
        if self.gpus_per_worker:
            first = slot * self.gpus_per_worker
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(self.gpus_per_worker))
        return env

    def _pin(self, slot: int):
        cpus = os.cpu_count() or 1
        cores = {(slot * self.cpus_per_worker + i) % cpus for i in range(self.cpus_per_worker)}

        def pin():
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, cores)
        return pin

    def _row(self, run: ProxyRun, returncode: int, log_path: Path) -> dict:
        row = existing_result(run)
        if row is not None:
            return row
        tail = log_path.read_text(errors="replace")[-_STDERR_TAIL_CHARS:] if log_path.exists() else ""
        kind = "input" if returncode == 2 else "crash"  # 2: the trainer rejected its input
        return failure_row(run.run_id, _planned_tokens(run),
                           f"process exited with code {returncode} without a result; log tail: {tail}",
                           run.config.seed, kind=kind)


def make_executor(spec: dict):
    spec = dict(spec or {})
    kind = spec.pop("kind", "local")
    if kind == "inprocess":
        return InProcessExecutor()
    if kind == "local":
        try:
            return LocalProcessExecutor(**spec)
        except TypeError as exc:
            raise InputError(f"executor (kind local): {exc}; keys: workers, gpus_per_worker, "
                             "cpus_per_worker") from None
    if kind == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(**spec)
    raise InputError(f"executor kind must be inprocess, local or slurm, got {kind!r}")
