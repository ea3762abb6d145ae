"""Sub-commands of the ``autoscale`` CLI (parsing lives in :mod:`autoscale_ds.cli`)."""

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .atomic import atomic_write_text
from .atomic import file_sha256
from .cli_args import (_domain_values, _float_of, _positive_float, emit, parse_token_count,
                       token_count_of)
from .errors import InputError
from .formats import load_mixture, load_runs, save_mixture
from .tables import format_table, human_tokens

logger = logging.getLogger(__name__)


def register_all(commands, formatter) -> None:
    from .data.command import register as _register_prepare

    for register in (_register_prepare, _register_pipeline, _register_ddo_run, _register_ddo,
                     _register_predict, _register_export, _register_plot):
        register(commands, formatter)


_PIPELINE_EXAMPLE = """example (AUTOSCALE.yaml):
  manifest: prepared/manifest.yaml
  output_dir: autoscale_out
  budgets: [500000, 1500000]       # DDO at two (or more) small budgets
  target_tokens: 10000000          # or steps: 1 (the paper's next scale)
  seeds: [0, 1]
  train: {model_size: tiny, seq_len: 128, micro_batch_size: 8, global_batch_size: 16}
  executor: {kind: local, workers: 2}
  predict: {floor: {"*": 0.02}, max_change_per_doubling: 1.5}
  export: {formats: [megatron, gpt-neox, hf]}

  autoscale pipeline --config AUTOSCALE.yaml
"""


def _register_pipeline(commands, formatter):
    p = commands.add_parser("pipeline", help="DDO at several budgets, predict, export, report",
                            description="The whole AutoScale method: a DDO sweep at each proxy "
                            "budget, the prediction at the target budget, exports and a "
                            "report.\n\n" + _PIPELINE_EXAMPLE, formatter_class=formatter)
    p.add_argument("--config", required=True, help="pipeline config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (YAML value), repeatable")
    p.set_defaults(handler=_pipeline)


def _pipeline(args) -> int:
    from .orchestrate.pipeline import load_pipeline_config, run_pipeline
    from .yaml_config import parse_set_overrides

    result = run_pipeline(load_pipeline_config(args.config, parse_set_overrides(args.set)))
    emit(predict_table(result.prediction))
    emit(f"\nmixture: {result.mixture_path}\nreport:  {result.report_path}")
    for fmt, path in result.exports.items():
        emit(f"export {fmt}: {path}")
    return 0


def _register_ddo_run(commands, formatter):
    from .orchestrate.ddo_run import EXAMPLE

    p = commands.add_parser("ddo-run", help="run a DDO proxy sweep (plan, train, solve)",
                            description="Plan the 2m+1 proxy runs of one budget, train the "
                            "missing ones, then fit and solve (same as launchers/ddo.py).\n\n"
                            + EXAMPLE, formatter_class=formatter)
    p.add_argument("--config", required=True, help="sweep config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep setting (YAML value), repeatable")
    p.set_defaults(handler=lambda args: _ddo_run(args))


def _ddo_run(args) -> int:
    from .orchestrate.ddo_run import run_from_config
    from .yaml_config import parse_set_overrides

    return run_from_config(args.config, parse_set_overrides(args.set))


# ---------------------------------------------------------------------------- ddo

_DDO_EXAMPLE = """example:
  autoscale ddo --runs runs_0.5M.json --out mixture_0.5M.json
  autoscale ddo --runs runs.json --out m.json --metric loss --max-ratio 3 \\
      --available-tokens wiki=2e6 --max-epochs 4 --noise-sigma 0.02
"""


def _register_ddo(commands, formatter):
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
    from .ddo import DDOOptions

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
    from .ddo import build_design, result_to_mixture, solve_design
    from .ddo_table import ddo_table

    check_output_file(args.out, [args.runs])
    options = _ddo_options(args)
    runs_file = load_runs(args.runs)
    design = build_design(runs_file, options, source=args.runs)
    _check_domains_known(options, design.domains)
    result = solve_design(design, options)
    provenance = {"runs_file": {"path": args.runs, "sha256": file_sha256(args.runs)},
                  "metric": options.metric or runs_file.metric,
                  "base_runs": design.base_runs, "failed_runs": design.failed_runs,
                  "eval_set": design.eval_set}
    mixture = result_to_mixture(result, provenance)
    mixture.provenance["sensitivity"] = _sensitivity(design, options, args)
    if not args.plain:
        from .noise_aware import shrink_ddo_mixture

        mixture = shrink_ddo_mixture(mixture)
    with writing(args.out):
        save_mixture(args.out, mixture)
    emit(ddo_table(mixture))
    emit(f"\nwrote {args.out}  (budget {human_tokens(mixture.total_tokens)} tokens)")
    return 0


def _check_domains_known(options, domains):
    for flag, names in (("--ratio-bounds", options.ratio_bounds),
                        ("--available-tokens", options.available_tokens)):
        unknown = [d for d in names if d not in domains]
        if unknown:
            raise InputError(f"{flag} names unknown domain {unknown[0]!r}; domains are {domains}")


def _sensitivity(design, options, args) -> dict:
    """The mixture's ``provenance.sensitivity``: the report, or why there is none."""
    from .sensitivity import SKIPPED_NOISE_UNKNOWN, skip_reason, weight_intervals

    reason = skip_reason(design, args.noise_sigma, args.sensitivity_draws)
    if reason is not None:
        if reason == SKIPPED_NOISE_UNKNOWN:
            logger.info("no repeated runs and no --noise-sigma: no sensitivity report")
        return {"skipped": reason}
    from tqdm import tqdm

    with tqdm(total=args.sensitivity_draws, desc="sensitivity", unit="draw",
              disable=None, file=sys.stderr) as bar:
        report = weight_intervals(design, options, args.noise_sigma, draws=args.sensitivity_draws,
                                  seed=args.seed, progress=bar.update)
    return report.to_dict()


# ------------------------------------------------------------------------ predict

_PREDICT_EXAMPLE = """example:
  autoscale predict --mixture mixture_0.5M.json --mixture mixture_1.5M.json \\
      --target-tokens 10B --out mixture_10B.json
  autoscale predict --mixture a.json --mixture b.json --steps 1 --out next.json
  autoscale predict --mixture a.json --mixture b.json --target-tokens 4.5M \\
      --floor 0.02 --floor code=0.1 --max-change-per-doubling 1.5 --out c.json
  autoscale predict --mixture a.json --mixture b.json --mixture c.json --backtest \\
      --out backtest.json
"""


def _register_predict(commands, formatter):
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
    from .predict import PredictGuards, predict

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
    prediction = predict(mixtures, target_tokens=args.target_tokens, steps=args.steps,
                         guards=guards, noise_aware=not args.plain)
    from .predict import prediction_to_mixture

    inputs = [{"path": p, "sha256": file_sha256(p)} for p in args.mixture]
    mixture = prediction_to_mixture(prediction, inputs, guards)
    with writing(args.out):
        save_mixture(args.out, mixture)
    emit(predict_table(prediction))
    residual = (f"{prediction.model.rms_log_residual:.3g}" if len(prediction.budgets) > 2
                else "n/a (two budgets fit exactly)")
    emit(f"\ns = {prediction.s:.4f}; log-linear RMS residual: {residual}")
    emit(f"wrote {args.out}  (budget {human_tokens(mixture.total_tokens)} tokens)")
    return 0


def _backtest(args, mixtures, guards) -> int:
    from .atomic import atomic_write_json
    from .backtest import backtest

    record = backtest(mixtures, guards, noise_aware=not args.plain)
    with writing(args.out):
        atomic_write_json(args.out, record)
    emit(backtest_table(record))
    emit(f"wrote {args.out}")
    return 0


def backtest_table(record: dict) -> str:
    """The backtest's per-domain and per-method tables (plain text)."""
    from .backtest import domain_rows, summary_rows

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


# ------------------------------------------------------------------------- export

_EXPORT_EXAMPLE = """example:
  autoscale export mixture_10B.json --format megatron --data-paths paths.yaml
  autoscale export mixture_10B.json --format gpt-neox --data-paths paths.yaml --out data.yml
"""


def _register_export(commands, formatter):
    from .export import FORMATS

    p = commands.add_parser("export", help="write a mixture in a training framework's format",
                            description="Turn a mixture plus a domain -> data-path map into "
                            "the config your trainer reads.\n\n" + _EXPORT_EXAMPLE,
                            formatter_class=formatter)
    p.add_argument("mixture", help="mixture file (autoscale.mixture/v1)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="target format")
    p.add_argument("--data-paths", required=True, help="YAML/JSON map of domain -> data path(s)")
    p.add_argument("--out", default=None, help="file to write (default: stdout)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed written into the hf and litdata exports")
    p.add_argument("--manifest", default=None,
                   help="domains manifest whose document and token counts convert hf "
                   "probabilities to per-example ones and cap olmo-core repetition "
                   "(default: --data-paths when it is a manifest)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from .export import export_mixture, load_data_paths

    if args.out:
        check_output_file(args.out, [args.mixture, args.data_paths, args.manifest])
    mixture = load_mixture(args.mixture)
    paths = load_data_paths(args.data_paths, manifest=args.manifest)
    text = export_mixture(mixture, paths, args.format, seed=args.seed)
    if args.out:
        with writing(args.out):
            atomic_write_text(args.out, text if text.endswith("\n") else text + "\n")
        emit(f"wrote {args.out} ({args.format})")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


# --------------------------------------------------------------------------- plot

_PLOT_EXAMPLE = """example:
  autoscale plot mixture_0.5M.json mixture_1.5M.json mixture_10B.json --out-dir plots/
"""


def _register_plot(commands, formatter):
    p = commands.add_parser("plot", help="PNGs of fitted responses and weights across budgets",
                            description="Draw each DDO mixture's fitted responses with their "
                            "observed points, and the weights across all budgets given.\n\n"
                            + _PLOT_EXAMPLE, formatter_class=formatter)
    p.add_argument("mixtures", nargs="+", help="mixture files (DDO and/or predicted)")
    p.add_argument("--out-dir", required=True, help="directory for the PNG files")
    p.set_defaults(handler=cmd_plot)


def cmd_plot(args) -> int:
    from .plots import plot_mixtures

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir}: exists and is not a directory")
    mixtures = [(path, load_mixture(path)) for path in args.mixtures]
    with writing(out_dir, "--out-dir"):
        written = plot_mixtures(mixtures, out_dir)
    for path in written:
        emit(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------ outputs


def check_output_file(out, inputs, flag: str = "--out") -> None:
    """Refuse an output path that is a directory or one of the inputs (the atomic write
    would replace the input: a runs file, hours of proxy training, lost)."""
    if Path(out).is_dir():
        raise InputError(f"{flag} {out}: is a directory; give a file name")
    for parent in Path(out).absolute().parents:  # the nearest existing one must be a directory
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{flag} {out}: {parent} is not a directory")
            break
    for source in (s for s in inputs if s is not None):
        if _same_file(out, source):
            raise InputError(f"{flag} {out} is the input file {source}; it would be "
                             "overwritten, write the result to another path")


def _same_file(a, b) -> bool:
    # realpath settles spellings like ./x or missing/../x (which samefile cannot stat);
    # samefile then sees through symlinks and hard links.
    try:
        return os.path.samefile(os.path.realpath(a), b)
    except OSError:  # one does not exist (yet): they are not the same file
        return False


@contextmanager
def writing(path, flag: str = "--out"):
    """An OS error while writing an output is the user's path's problem: one line naming it."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
