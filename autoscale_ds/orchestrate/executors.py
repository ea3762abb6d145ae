"""Ways to execute proxy runs. Each calls ``record(run, row)`` once per finished run.

- ``InProcessExecutor``: one after the other in this process. Under a multi-rank launch
  (``deepspeed --num_gpus N``, ``torchrun``) it runs on rank 0 with a ``RankGroup``: before
  each run it sends the run's config to the other ranks (``follow_rank0``), and all ranks
  train it together; only rank 0 plans, records, solves and writes.
- ``LocalProcessExecutor``: K concurrent worker processes, each pinned to its own GPUs
  (``CUDA_VISIBLE_DEVICES``) or its own CPU cores (affinity + thread count).
- ``SlurmExecutor`` (see :mod:`autoscale_ds.orchestrate.slurm`): a job array.

A run that ends without a result of its own (crash, kill, OOM) is recorded as failed with
the reason; the sweep goes on.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import EXIT_INPUT_ERROR, InputError
from .runs_store import existing_result, failure_row
from .sweep import ProxyRun

logger = logging.getLogger(__name__)

Record = Callable[[ProxyRun, dict], None]
_POLL_SECONDS = 0.2
_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_STDERR_TAIL_CHARS = 2000


def _planned_tokens(run: ProxyRun) -> dict:
    return dict(run.config.tokens_per_domain)


class InProcessExecutor:
    def __init__(self, ranks: Optional["RankGroup"] = None):
        self.ranks = ranks
        """Set on rank 0 of a multi-rank launch: the other ranks train each run with it."""

    def execute(self, runs: Sequence[ProxyRun], record: Record) -> None:
        from ..train.distributed import is_main_process

        for run in runs:
            logger.info("run %s: training in this process", run.run_id)
            if self.ranks is not None:
                self.ranks.send(("train", run.config))
            row = train_in_process(run)
            if is_main_process():  # a caller without a RankGroup may run this on every rank
                record(run, row)


def train_in_process(run: ProxyRun) -> dict:
    """The run's result row; a run that cannot train is a failure row, never the sweep's end."""
    from ..train.trainer import CheckpointUnreadable, Trainer

    try:
        return Trainer(run.config).run()
    except CheckpointUnreadable as exc:  # fixed by deleting them: a restart must retry it
        return failure_row(run.run_id, _planned_tokens(run), str(exc), run.config.seed, kind="crash")
    except InputError as exc:  # e.g. a budget the data cannot serve: rerunning won't help
        return failure_row(run.run_id, _planned_tokens(run), f"bad input: {exc}",
                           run.config.seed, kind="input")
    except Exception as exc:  # a dying proxy is a recorded result, not the sweep's end
        logger.exception("run %s crashed", run.run_id)
        return failure_row(run.run_id, _planned_tokens(run), f"crashed: {exc!r}", run.config.seed)


class RankGroup:
    """Rank 0's orders to the other ranks of one launch, over a CPU (gloo) group of its own,
    so they work whatever backend training uses and need no device set."""

    def __init__(self):
        import deepspeed
        import torch.distributed as dist

        from ..train.distributed import ensure_launcher_env

        ensure_launcher_env()
        deepspeed.init_distributed()  # the backend training will use (nccl on GPUs, gloo on CPU)
        self._dist = dist
        self._group = dist.new_group(backend="gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def send(self, message) -> None:
        """Rank 0 only: deliver one message to every other rank."""
        self._dist.broadcast_object_list([message], src=0, group=self._group)

    def receive(self):
        box = [None]
        self._dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def acknowledge_stop(self) -> None:
        """Every rank meets here after "stop" (a rank that already died is not waited for)."""
        try:
            self._dist.barrier(group=self._group)
        except RuntimeError as exc:
            logger.warning("ranks did not all meet after the sweep: %s", exc)

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def follow_rank0(ranks: RankGroup) -> int:
    """A non-zero rank: train each run rank 0 sends, until it says stop. Nothing is written
    here (the trainer writes results on rank 0 only); rank 0 reports every outcome."""
    from .sweep import ProxyRun

    while True:
        kind, payload = ranks.receive()
        if kind == "stop":
            return 0
        run = ProxyRun(payload.run_id, payload)
        logger.info("run %s: training with rank 0 (rank %d)", run.run_id, ranks.rank)
        row = train_in_process(run)
        logger.info("run %s: done on rank %d (%s)", run.run_id, ranks.rank, row["status"])


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
        kind = "input" if returncode == EXIT_INPUT_ERROR else "crash"
        return failure_row(run.run_id, _planned_tokens(run),
                           f"process exited with code {returncode} without a result; log tail: {tail}",
                           run.config.seed, kind=kind)


def make_executor(spec: dict, ranks: Optional[RankGroup] = None):
    """The configured executor; under a multi-rank launch (``ranks``) always the in-process
    one, since each rank starting its own workers would train every run N times over."""
    spec = dict(spec or {})
    kind = spec.pop("kind", "local")
    if ranks is not None:
        if kind != "inprocess":
            logger.warning("executor kind %r does not apply under a %d-rank launch: every run "
                           "trains in-process on all %d ranks", kind, ranks.world_size,
                           ranks.world_size)
        return InProcessExecutor(ranks)
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
