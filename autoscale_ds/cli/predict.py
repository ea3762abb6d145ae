"""The ``autoscale predict`` sub-command: DDO mixtures extrapolated to a larger budget."""

from ..atomic import file_sha256
from ..console import _domain_values, _float_of, emit, parse_token_count
from ..errors import InputError
from ..formats.schemas import load_mixture, save_mixture
from ..tables import format_table, human_tokens
from .common import check_output_file, writing


_PREDICT_EXAMPLE = """example:
  autoscale predict --mixture mixture_0.5M.json --mixture mixture_1.5M.json \\
      --target-tokens 10B --out mixture_10B.json
  autoscale predict --mixture a.json --mixture b.json --steps 1 --out next.json
  autoscale predict --mixture a.json --mixture b.json --target-tokens 4.5M \\
      --floor 0.02 --floor code=0.1 --max-change-per-doubling 1.5 --out c.json
  autoscale predict --mixture a.json --mixture b.json --mixture c.json --backtest \\
      --out backtest.json
"""


def register(commands, formatter):
    p = commands.add_parser("predict", help="extrapolate DDO mixtures to a larger budget",
                            description="AutoScale: fit log N_i linear in a shared coordinate "
                            "across budgets and predict the mixture at the target.\n\n"
                            + _PREDICT_EXAMPLE, formatter_class=formatter)
    p.add_argument("--mixture", action="append", required=True,
                   help="DDO mixture at one budget; give two or more")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-tokens", type=parse_token_count,
                        help="total budget to predict for (e.g. 10B)")
    target.add_argument("--steps", type=float,
                        help="scale steps past the largest budget (1 = the paper's next scale "
                        "N3 = N2^2 / N1)")
    p.add_argument("--floor", action="append", metavar="[DOMAIN=]W",
                   help="minimum weight (all domains, or one), repeatable")
    p.add_argument("--max-change-per-doubling", type=float, default=None,
                   help="factor >= 1 a weight may change by per doubling of budget")
    p.add_argument("--extrapolate-unmeasured", action="store_true",
                   help="also extrapolate domains DDO kept at their base quantity at some budget "
                   "(default: hold them at their weight of the largest budget)")
    target.add_argument("--backtest", action="store_true",
                        help="predict the largest budget's DDO mixture from the smaller ones "
                        "(three or more mixtures) and write an autoscale.backtest/v1 report")
    p.add_argument("--plain", action="store_true",
                   help="the paper's rule as it is (default: shrink each domain's extrapolated "
                   "change by the signal-to-noise ratio of its trend, when the mixtures carry "
                   "noise)")
    p.add_argument("--out", required=True,
                   help="mixture file to write (with --backtest: the backtest report)")
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args) -> int:
    from ..method.predict import PredictGuards
    from ..method.steps import predict_step

    check_output_file(args.out, args.mixture)
    mixtures = [load_mixture(path) for path in args.mixture]
    floors = {d: _float_of(v, "--floor") for d, v in _domain_values(args.floor, "--floor", "*").items()}
    unknown = [d for d in floors if d != "*" and d not in mixtures[0].weights]
    if unknown:
        raise InputError(f"--floor names unknown domain {unknown[0]!r}")
    guards = PredictGuards(floor=floors, max_change_per_doubling=args.max_change_per_doubling,
                           hold_unmeasured=not args.extrapolate_unmeasured)
    if args.backtest:
        return _backtest(args, mixtures, guards)
    if args.target_tokens is None and args.steps is None:
        raise InputError("give one of --target-tokens, --steps or --backtest")
    inputs = [{"path": p, "sha256": file_sha256(p)} for p in args.mixture]
    prediction, mixture = predict_step(mixtures, inputs, guards, target_tokens=args.target_tokens,
                                       steps=args.steps, noise_aware=not args.plain)
    with writing(args.out):
        save_mixture(args.out, mixture)
    emit(predict_table(prediction))
    residual = (f"{prediction.model.rms_log_residual:.3g}" if len(prediction.budgets) > 2
                else "n/a (two budgets fit exactly)")
    emit(f"\ns = {prediction.s:.4f}; log-linear RMS residual: {residual}")
    emit(f"wrote {args.out}  (budget {human_tokens(mixture.total_tokens)} tokens)")
    return 0


def _backtest(args, mixtures, guards) -> int:
    from ..atomic import atomic_write_json
    from ..method.backtest import backtest

    record = backtest(mixtures, guards, noise_aware=not args.plain)
    with writing(args.out):
        atomic_write_json(args.out, record)
    emit(backtest_table(record))
    emit(f"wrote {args.out}")
    return 0


def backtest_table(record: dict) -> str:
    """The backtest's per-domain and per-method tables (plain text)."""
    from ..method.backtest import domain_rows, summary_rows

    return (f"backtest: {human_tokens(record['held_out_budget'])} predicted from "
            f"{', '.join(human_tokens(b) for b in record['input_budgets'])}\n"
            + format_table(*domain_rows(record)) + "\n\n" + format_table(*summary_rows(record))
            + "\n(predicted objective loss: fitted DDO objective at the prediction minus at the "
            "held-out DDO weights, relative)\n")


def predict_table(prediction) -> str:
    rows = []
    for domain, r in prediction.report.items():
        rows.append([domain, *r.proxy_weights, r.raw_weight, r.weight,
                     "-" if r.trend_per_doubling is None else f"x{r.trend_per_doubling:.3f}",
                     "-" if r.shrinkage is None else f"{r.shrinkage:.2f}",
                     f"x{r.observed_change_per_doubling:.3f}", f"x{r.predicted_change_per_doubling:.3f}",
                     "LEAVES" if r.leaves_proxy_range else "", r.guard or "",
                     {None: "", True: "yes", False: "no"}[r.trend_within_noise],
                     ", ".join(human_tokens(b) for b in r.kept_at_base_at)])
    budgets = [f"w@{human_tokens(b)}" for b in prediction.budgets]
    headers = ["domain", *budgets, "model w", f"w@{human_tokens(prediction.total_tokens)}",
               "trend/doubling", "kept", "obs/doubling", "pred/doubling", "range", "guard", "trend in noise", "kept at base @"]
    return format_table(headers, rows)
