"""The ``autoscale ddo`` sub-command: the optimal mixture at one budget from proxy runs."""

from ..atomic import file_sha256
from ..console import _domain_values, _float_of, _positive_float, emit, token_count_of
from ..errors import InputError
from ..formats.schemas import load_runs, save_mixture
from ..tables import human_tokens
from .common import check_output_file, writing


_DDO_EXAMPLE = """example:
  autoscale ddo --runs runs_0.5M.json --out mixture_0.5M.json
  autoscale ddo --runs runs.json --out m.json --metric loss --max-ratio 3 \\
      --available-tokens wiki=2e6 --max-epochs 4 --noise-sigma 0.02
"""


def register(commands, formatter):
    p = commands.add_parser("ddo", help="optimal mixture at one budget from proxy runs",
                            description="DDO: fit each domain's response to its perturbed runs "
                            "and solve for the best mixture at the base run's budget.\n\n"
                            + _DDO_EXAMPLE, formatter_class=formatter)
    p.add_argument("--runs", required=True, help="autoscale.runs/v1 JSON file")
    p.add_argument("--out", required=True, help="mixture file to write (autoscale.mixture/v1)")
    p.add_argument("--metric", choices=["perplexity", "loss"], default=None,
                   help="objective metric (default: the runs file's)")
    p.add_argument("--min-ratio", type=_positive_float, default=None,
                   help="lower bound on every domain's ratio to its base quantity "
                   "(default: smallest ratio tried for that domain)")
    p.add_argument("--max-ratio", type=_positive_float, default=None,
                   help="upper bound (default: largest ratio tried for that domain)")
    p.add_argument("--ratio-bounds", action="append", metavar="DOMAIN=LO:HI",
                   help="per-domain ratio bounds, repeatable")
    p.add_argument("--available-tokens", action="append", metavar="DOMAIN=TOKENS",
                   help="tokens a domain has (caps its quantity with --max-epochs), repeatable")
    p.add_argument("--max-epochs", type=_positive_float, default=1.0,
                   help="passes allowed over a domain's available tokens")
    p.add_argument("--eval-weight", action="append", metavar="EVAL_DOMAIN=W",
                   help="weight of an eval domain in the objective (default: plain mean)")
    p.add_argument("--base-run", default=None, help="id of the base run if ambiguous")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="keep domains lacking perturbed runs at their base quantity")
    p.add_argument("--allow-mixed-eval", action="store_true",
                   help="combine runs whose rows record different eval sets (warns, and the "
                   "mixture's provenance says so)")
    p.add_argument("--noise-sigma", type=float, default=None,
                   help="relative noise of a run's objective for the sensitivity report "
                   "(default: estimated from repeated runs, if any)")
    p.add_argument("--sensitivity-draws", type=int, default=100,
                   help="Monte-Carlo draws of the sensitivity report (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sensitivity draws")
    p.add_argument("--plain", action="store_true",
                   help="write the DDO optimum as it is (default: with a sensitivity report, "
                   "shrink each move from the base by its signal-to-noise ratio)")
    p.set_defaults(handler=cmd_ddo)


def _ddo_options(args):
    from ..method.ddo import DDOOptions

    bounds = {}
    for domain, text in _domain_values(args.ratio_bounds, "--ratio-bounds").items():
        lo, sep, hi = text.partition(":")
        if not sep:
            raise InputError(f"--ratio-bounds expects DOMAIN=LO:HI, got {domain}={text}")
        bounds[domain] = (_float_of(lo, "--ratio-bounds"), _float_of(hi, "--ratio-bounds"))
    available = {d: token_count_of(v, f"--available-tokens {d}")
                 for d, v in _domain_values(args.available_tokens, "--available-tokens").items()}
    eval_weights = {d: _float_of(v, "--eval-weight")
                    for d, v in _domain_values(args.eval_weight, "--eval-weight").items()}
    return DDOOptions(metric=args.metric, eval_weights=eval_weights or None,
                      min_ratio=args.min_ratio, max_ratio=args.max_ratio, ratio_bounds=bounds,
                      available_tokens=available, max_epochs=args.max_epochs,
                      base_run=args.base_run, allow_incomplete=args.allow_incomplete,
                      allow_mixed_eval=args.allow_mixed_eval)


def cmd_ddo(args) -> int:
    from ..method.ddo_table import ddo_table
    from ..method.steps import ddo_step

    check_output_file(args.out, [args.runs])
    options = _ddo_options(args)
    runs_file = load_runs(args.runs)
    _check_domains_known(options, list(runs_file.runs[0].train_tokens) if runs_file.runs else [])
    step = ddo_step(runs_file, options, {"path": args.runs, "sha256": file_sha256(args.runs)},
                    noise_sigma=args.noise_sigma, sensitivity_draws=args.sensitivity_draws,
                    seed=args.seed, noise_aware=not args.plain,
                    noise_hint="repeat the base run over two seeds, or pass --noise-sigma S")
    with writing(args.out):
        save_mixture(args.out, step.mixture)
    emit(ddo_table(step.mixture))
    emit(f"\nwrote {args.out}  (budget {human_tokens(step.mixture.total_tokens)} tokens)")
    return 0


def _check_domains_known(options, domains):
    for flag, names in (("--ratio-bounds", options.ratio_bounds),
                        ("--available-tokens", options.available_tokens)):
        unknown = [d for d in names if d not in domains]
        if unknown:
            raise InputError(f"{flag} names unknown domain {unknown[0]!r}; domains are {domains}")
