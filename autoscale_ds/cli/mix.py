"""The ``autoscale mix`` sub-command: a thin wrapper over :mod:`autoscale_ds.orchestrate.mix`."""

from ..console import emit
from ..errors import EXIT_RUN_FAILED
from ..yaml_config import overrides_from

_MIX_EXAMPLE = """example:
  autoscale mix --method natural --manifest prepared/manifest.yaml --out natural.json
  autoscale mix --method temperature --tau 2 --manifest prepared/manifest.yaml --out temp.json
  autoscale mix --method unimax --max-epochs 1 --target-tokens 1.5M \\
      --manifest prepared/manifest.yaml --out unimax.json
  autoscale mix --config examples/mix_regmix.yaml          # proxy runs: regmix or doremi
  autoscale mix --config examples/mix_doremi.yaml --set doremi.proxy_tokens=100K

config keys: manifest, method, out, output_dir, domains, target_tokens, tau, max_epochs,
  doremi: {proxy_tokens, reference_tokens, base: uniform|tokens, step_size, smoothing, seed},
  regmix: {runs, proxy_tokens, seed, regressor: auto|lightgbm|ridge, candidates, top_k,
           max_epochs, folds},
  train: {any training setting}, executor: {kind: inprocess|local|slurm, workers: 2},
  retry_failed
"""


def register(commands, formatter):
    p = commands.add_parser("mix", help="a baseline mixture: natural, temperature, unimax, "
                            "doremi or regmix",
                            description="Compute a data mixture with one of the baseline "
                            "methods and write it as an autoscale.mixture/v1 file. natural, "
                            "temperature and unimax need no training; regmix and doremi train "
                            "proxy runs (resumable: a rerun trains only what is missing).\n\n"
                            + _MIX_EXAMPLE, formatter_class=formatter)
    p.add_argument("--config", default=None, help="mix config (YAML); flags override it")
    p.add_argument("--method", default=None,
                   help="natural | temperature | unimax | doremi | regmix")
    p.add_argument("--manifest", default=None, help="domains manifest from `autoscale prepare`")
    p.add_argument("--out", default=None, help="mixture file to write (autoscale.mixture/v1)")
    p.add_argument("--output-dir", default=None,
                   help="work directory for proxy runs and summary.json (doremi, regmix)")
    p.add_argument("--target-tokens", default=None,
                   help="the mixture's total tokens, e.g. 10M (default: all training tokens)")
    p.add_argument("--tau", type=float, default=None,
                   help="temperature: weights ∝ tokens^(1/tau) (default 2; 1 = natural)")
    p.add_argument("--max-epochs", type=float, default=None,
                   help="unimax: passes allowed over a domain's tokens (default 1)")
    p.add_argument("--domains", default=None, help="comma-separated subset of the domains")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (YAML value; regmix.runs=8 sets one key of a "
                   "section), repeatable")
    p.set_defaults(handler=_mix)


def _mix(args) -> int:
    from ..orchestrate.mix import RunsFailed, run_mix
    from ..orchestrate.mix_config import load_mix_config

    flags = {"method": args.method, "manifest": args.manifest, "out": args.out,
             "output_dir": args.output_dir, "target_tokens": args.target_tokens,
             "tau": args.tau, "max_epochs": args.max_epochs,
             "domains": [d.strip() for d in args.domains.split(",")] if args.domains else None}
    config = load_mix_config(args.config, flags, overrides_from(args.set))
    try:
        result = run_mix(config)
    except RunsFailed as exc:
        from ..console import emit_error

        emit_error("autoscale", str(exc))
        return EXIT_RUN_FAILED
    _print(result)
    return 0


def _print(result) -> None:
    mixture = result.mixture
    width = max(len(d) for d in mixture.weights)
    emit(f"{'domain':<{width}}  weight   tokens")
    for domain, weight in mixture.weights.items():
        emit(f"{domain:<{width}}  {weight:.4f}  {mixture.tokens[domain]:,.0f}")
    emit(f"\nmixture ({mixture.method}): {result.mixture_path}")
    if result.proxy_runs:
        emit(f"proxy runs: {result.proxy_runs} ({len(result.trained)} trained now, "
             f"{len(result.failed)} failed), {result.proxy_tokens_trained:,} proxy tokens")
    for label, path in (("report", result.report_path), ("plot", result.plot_path),
                        ("summary", result.summary_path)):
        if path is not None:
            emit(f"{label}: {path}")
