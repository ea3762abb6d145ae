"""Entry point of one training run: ``python -m autoscale_ds.train.launch --config RUN.yaml``.

``launchers/train.py`` is this module as a script, for ``deepspeed``/``torchrun``. Exit
codes: 0 trained, 3 the run failed and was recorded (NaN, divergence), 2 bad input.
"""

import argparse
import logging
import sys

import yaml

from ..errors import InputError
from .config import load_train_config
from ..cli import emit_error


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config setting (YAML value), repeatable")
    # The deepspeed launcher appends --local_rank; the rank also arrives in LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def overrides_from(pairs):
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_train_config(args.config, overrides_from(args.set))
        from .trainer import EXIT_RUN_FAILED, train

        row = train(config)
    except InputError as exc:
        emit_error("train", str(exc))
        return 2
    return 0 if row["status"] == "ok" else EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
