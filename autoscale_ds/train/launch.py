"""Entry point of one training run: ``python -m autoscale_ds.train.launch --config RUN.yaml``.

``launchers/train.py`` is this module as a script, for ``deepspeed``/``torchrun``. Exit
codes: 0 trained, 3 the run failed and was recorded (NaN, divergence), 2 bad input.
Errors are one line, ``train: error: ...``, whichever way it was started.
"""

import argparse
import logging
import sys

from ..console import emit_error
from ..errors import EXIT_INPUT_ERROR, EXIT_RUN_FAILED, InputError
from ..yaml_config import overrides_from
from .config import load_train_config

PROG = "train"


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as one `train: error:` line and exit 2, like every other error."""

    def error(self, message):
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(message))


def _fail(message: str) -> int:
    emit_error(PROG, " ".join(line.strip() for line in message.splitlines()))
    return EXIT_INPUT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config setting (YAML value), repeatable")
    # The deepspeed launcher appends --local_rank; the rank also arrives in LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    _add_deepspeed_arguments(parser)
    return parser


def _add_deepspeed_arguments(parser: argparse.ArgumentParser) -> None:
    """DeepSpeed's own flags (--deepspeed, --deepspeed_config), so scripts written for other
    DeepSpeed trainers work: --deepspeed_config is the run config's `ds_config`."""
    try:
        import deepspeed
    except ImportError:  # the error that matters comes when training starts
        return
    deepspeed.add_config_arguments(parser)


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def command_line_overrides(args) -> dict:
    """--set pairs, then --deepspeed_config (DeepSpeed's name for `ds_config`)."""
    overrides = overrides_from(args.set)
    ds_config = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    if ds_config:
        overrides["ds_config"] = ds_config
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_train_config(args.config, command_line_overrides(args))
        from .trainer import train

        row = train(config)
    except InputError as exc:
        return _fail(str(exc))
    return 0 if row["status"] == "ok" else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
