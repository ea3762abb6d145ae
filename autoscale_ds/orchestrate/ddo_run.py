"""``launchers/ddo.py`` / ``autoscale ddo-run``: one DDO sweep from a YAML config."""

import atexit
import logging
import os
import sys

from ..errors import EXIT_INPUT_ERROR, InputError
from ..method.ddo_table import CONFIG_SIGMA_HINT, ddo_table
from ..tables import human_tokens
from ..console import emit, emit_error
from ..yaml_config import overrides_from

logger = logging.getLogger(__name__)

EXAMPLE = """example (DDO.yaml):
  manifest: prepared/manifest.yaml
  output_dir: sweeps/ddo_500K
  budget_tokens: 500000          # total tokens of the base run (uniform over domains)
  seeds: [0, 1, 2]               # the base run repeated: its spread is the noise estimate
  train: {model_size: tiny, seq_len: 128, micro_batch_size: 8, global_batch_size: 16}
  executor: {kind: local, workers: 2}     # or inprocess, or slurm

  autoscale ddo-run --config DDO.yaml
  deepspeed --num_gpus 8 launchers/ddo.py --config DDO.yaml   # in-process on all GPUs;
                                                              # rank 0 alone writes
"""


def run_from_config(path: str, overrides=None) -> int:
    from ..train.distributed import world_size

    if world_size() > 1:
        return _run_multi_rank(path, overrides)
    return _run_sweep(path, overrides)


def _run_sweep(path: str, overrides=None, ranks=None) -> int:
    from .executors import make_executor
    from .runner import check_sweep, run_sweep
    from .sweep import load_sweep_config

    config = load_sweep_config(path, overrides)
    check_sweep(config)  # every bad setting named with its file, before an executor exists
    result = run_sweep(config, make_executor(config.executor, ranks))
    _print_summary(result)
    return 0


def _run_multi_rank(path: str, overrides=None) -> int:
    """``deepspeed --num_gpus N launchers/ddo.py``: rank 0 alone reads the config, plans,
    records, solves and writes; the other ranks train each run with it when told, and exit 0
    when it says stop (also when it stops on an error, which rank 0 alone reports)."""
    from .executors import RankGroup, follow_rank0

    ranks = RankGroup()
    if ranks.rank != 0:
        code = follow_rank0(ranks)
        ranks.acknowledge_stop()
        # Gone before rank 0 is: when rank 0 exits with an error, the launcher stops the
        # ranks still alive, and one still tearing down would be reported as failed too. The
        # exit handlers run; the slow interpreter teardown is skipped.
        ranks.close()
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    try:
        return _run_sweep(path, overrides, ranks)
    finally:
        ranks.send(("stop", None))
        ranks.acknowledge_stop()
        ranks.close()


def _print_summary(result) -> None:
    from ..train.distributed import is_main_process

    if not is_main_process():
        return
    mixture = result.mixture
    emit(ddo_table(mixture, CONFIG_SIGMA_HINT))
    if result.pinned:
        emit("kept at base: " + "; ".join(f"{d} ({why})" for d, why in result.pinned.items()))
    emit(f"\ntrained {len(result.trained)} run(s) now; failed runs: {result.failed or 'none'}")
    emit(f"wrote {result.mixture_path} (budget {human_tokens(mixture.total_tokens)} tokens) "
          f"and {result.runs_path}")


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ddo-run", description="Run a DDO proxy sweep.\n\n" + EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_from_config(args.config, overrides_from(args.set))
    except InputError as exc:
        from ..train.distributed import is_main_process

        if is_main_process():  # every rank meets a bad flag; one line is enough
            emit_error("ddo-run", " ".join(line.strip() for line in str(exc).splitlines()))
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
