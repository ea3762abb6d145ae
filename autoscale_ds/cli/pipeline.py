"""The ``autoscale pipeline`` and ``autoscale ddo-run`` sub-commands: thin wrappers over
:mod:`autoscale_ds.orchestrate`."""

from ..console import emit
from ..yaml_config import overrides_from
from .predict import predict_table


_PIPELINE_EXAMPLE = """example (AUTOSCALE.yaml):
  manifest: prepared/manifest.yaml
  output_dir: autoscale_out
  budgets: [500000, 1000000]       # DDO at two (or more) small budgets
  proxy_schedule: cosine           # or wsd: each mixture trained once, smaller budgets branch
  target_tokens: 10000000          # or steps: 1 (the paper's next scale)
  seeds: [0, 1]
  train: {model_size: tiny, seq_len: 128, micro_batch_size: 8, global_batch_size: 16}
  executor: {kind: local, workers: 2}
  predict: {floor: {"*": 0.02}, max_change_per_doubling: 1.5}
  export: {formats: [megatron, gpt-neox, hf]}

  autoscale pipeline --config AUTOSCALE.yaml
"""


def register_pipeline(commands, formatter):
    p = commands.add_parser("pipeline", help="DDO at several budgets, predict, export, report",
                            description="The whole AutoScale method: a DDO sweep at each proxy "
                            "budget, the prediction at the target budget, exports and a "
                            "report.\n\n" + _PIPELINE_EXAMPLE, formatter_class=formatter)
    p.add_argument("--config", required=True, help="pipeline config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (YAML value), repeatable")
    p.set_defaults(handler=_pipeline)


def _pipeline(args) -> int:
    from ..orchestrate.pipeline import load_pipeline_config, run_pipeline

    result = run_pipeline(load_pipeline_config(args.config, overrides_from(args.set)))
    emit(predict_table(result.prediction))
    emit(f"\nmixture: {result.mixture_path}\nreport:  {result.report_path}")
    for fmt, path in result.exports.items():
        emit(f"export {fmt}: {path}")
    return 0


def register_ddo_run(commands, formatter):
    from ..orchestrate.ddo_run import EXAMPLE

    p = commands.add_parser("ddo-run", help="run a DDO proxy sweep (plan, train, solve)",
                            description="Plan the 2m+1 proxy runs of one budget, train the "
                            "missing ones, then fit and solve (same as launchers/ddo.py).\n\n"
                            + EXAMPLE, formatter_class=formatter)
    p.add_argument("--config", required=True, help="sweep config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep setting (YAML value), repeatable")
    p.set_defaults(handler=_ddo_run)


def _ddo_run(args) -> int:
    from ..orchestrate.ddo_run import run_from_config

    return run_from_config(args.config, overrides_from(args.set))
