"""Does the AutoScale mixture train a better model at the target budget? (AutoScale paper, Sec. 5)

Runs (or reuses) the pipeline of a config, then trains at its target budget, each arm over
several seeds, with validation every few steps:

  uniform        equal weights
  tokens         weights proportional to each domain's training tokens
  ddo@<largest>  the DDO mixture of the largest proxy budget, reused as it is (common practice)
  autoscale      the predicted mixture (the pipeline's settings: noise-aware by default)
  autoscale-plain  the paper's method on the same proxy runs: the plain DDO optima and the
                 plain predictor, with the same guards (what the noise-aware steps change)
  autoscale-unheld  the prediction that extrapolates domains DDO kept at base (--unheld, only
                 when the prediction held some: it shows what the hold changed)
  ddo@<target>   DDO run directly at the target budget (--direct-ddo; 2m+1 target-size runs)
  temperature    weights ∝ tokens^(1/τ), τ = 2 (closed form, no proxy)
  unimax         UniMax (Chung et al. 2023): uniform, each domain capped at one epoch
  doremi         DoReMi (Xie et al. 2023): a reference run on uniform weights, then a Group
                 DRO proxy run, both at the largest proxy budget; its averaged weights
  regmix         RegMix (Liu et al. 2024): 16 proxy runs on Dirichlet mixtures at the smallest
                 proxy budget, a regression (LightGBM, or ridge), the top-100 search

--arms picks them (default: all but unimax, the unheld and the direct arms); autoscale is
always one, as every other arm is compared with it. Each arm's proxy compute (tokens its
method trained before the target run) is reported next to its result.

A comparison only counts if it is measured honestly (DESIGN.md, "Measuring a mixture"), so
it prints, and writes to quality.json:

- the weights, and the final average and per-domain validation perplexity (mean ± sample std
  over seeds);
- the epochs each arm read of each domain (most over seeds), flagging REPEATS where an arm read
  a domain more than once: such an arm measures repetition, not the mixture;
- per baseline, paired by seed (every arm runs the same seeds: same init, same sample order):
  the mean difference autoscale - baseline of the final average perplexity with a 90 %
  t-interval over seeds (none with one seed), the relative difference, and the speed-up
  1 - tokens AutoScale needs to reach the baseline's final average perplexity / the baseline's
  tokens, on the seed-mean curves and seed by seed;
- the noise next to it: each arm's seed-to-seed spread (relative sample std) and the eval
  set's own sampling error (the objective on its two disjoint halves), when the runs record it.

Every run must have been measured on one eval set (its fingerprint in the result row); the
benchmark stops, naming the runs, when they differ. It draws the curves and asserts nothing
about the result. Relative figures in quality.json are fractions (0.05 = 5 %).

    python bench/quality.py                  # the demo's setup (built-in corpus, 1.5M tokens), 3 seeds
    python bench/quality.py --quick          # smaller budgets, 4 domains, 2 seeds
    python bench/quality.py --config AUTOSCALE.yaml --seeds 3 --direct-ddo   # your own setup
    python bench/quality.py --arm paired=other_out/mixture_1.5M.json         # one more arm

Every arm/seed run is kept under --out and reused when its config is unchanged, so an
interrupted benchmark continues where it stopped.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

logger = logging.getLogger("quality")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo_pipeline.yaml"
CONFIDENCE = 0.90  # of the paired difference's t-interval
# --quick: the demo's corpus and model at about half its budgets and a fifth of its target,
# 4 domains, 2 seeds.
# Arms: the pipeline's own (ddo: the largest proxy budget's DDO mixture reused), then the
# other methods, run by `autoscale mix` on the same corpus, model and executor.
PIPELINE_ARMS = ("uniform", "tokens", "ddo", "autoscale", "autoscale-plain")
METHOD_ARMS = ("temperature", "unimax", "doremi", "regmix")
KNOWN_ARMS = PIPELINE_ARMS + METHOD_ARMS
DEFAULT_ARMS = PIPELINE_ARMS + ("temperature", "doremi", "regmix")
REGMIX_RUNS = 16  # proxy runs at the smallest budget (the paper: 512 tiny models; CPU-sized)
QUICK_OVERRIDES = {"budgets": [40_000, 80_000], "target_tokens": 320_000,
                   "domains": ["fiction", "dictionary", "code", "chat"]}


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pipeline config (YAML); default: the demo's on the built-in corpus")
    parser.add_argument("--quick", action="store_true", help="the demo's setup at smaller budgets, 4 domains")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; --quick: 2)")
    parser.add_argument("--evals", type=int, default=8, help="evaluations per training run")
    parser.add_argument("--direct-ddo", action="store_true",
                        help="also run DDO directly at the target budget (2m+1 target-size runs)")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=MIXTURE.json",
                        help="also train this mixture file's weights as arm NAME (repeatable), "
                        "e.g. the prediction of another pipeline config on the same corpus")
    parser.add_argument("--unheld", action="store_true",
                        help="also train the prediction that extrapolates domains DDO kept at base")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS),
                        help=f"comma-separated arms, of {', '.join(KNOWN_ARMS)} (default: %(default)s)")
    parser.add_argument("--out", default="bench_results/quality", help="runs, curves and results")
    args = parser.parse_args()
    args.arms = chosen_arms(args.arms)
    return args


def chosen_arms(spec: str) -> List[str]:
    """The ``--arms`` list, checked: known names, autoscale among them (every comparison is
    with it), no repeats."""
    arms = [a.strip() for a in spec.split(",") if a.strip()]
    unknown = [a for a in arms if a not in KNOWN_ARMS]
    if unknown:
        raise SystemExit(f"quality benchmark: --arms: unknown arm(s) {', '.join(unknown)}; "
                         f"known: {', '.join(KNOWN_ARMS)}")
    if "autoscale" not in arms:
        raise SystemExit("quality benchmark: --arms must include autoscale: every other arm is "
                         "compared with it")
    return list(dict.fromkeys(arms))


def pipeline_config(args, out: Path):
    """The given pipeline config (``args.config``), or the demo's (examples/demo_pipeline.yaml)
    on the built-in corpus prepared under ``out``, cut down when ``args.quick``."""
    from autoscale_ds.orchestrate.pipeline import load_pipeline_config

    if args.config:
        return load_pipeline_config(args.config)
    overrides = {"manifest": _builtin_manifest(out / "prepared"), "output_dir": str(out / "pipeline"),
                 "export": {"formats": []}}
    if args.quick:
        overrides.update(QUICK_OVERRIDES)
    return load_pipeline_config(DEMO_CONFIG, overrides)


def _builtin_manifest(out_dir: Path) -> str:
    """The demo's corpus (scripts/demo.sh): the 6 built-in domains, 2000-piece tokenizer."""
    from autoscale_ds.data.builtin_corpus import build_builtin_corpus
    from autoscale_ds.data.prepare import PrepareConfig, prepare

    specs = build_builtin_corpus(out_dir.parent / "raw")
    manifest = prepare(PrepareConfig(out_dir=str(out_dir), domains=specs, train_vocab_size=2000,
                                     progress=False))
    return str(manifest.root / "manifest.yaml")


def arm_weights(config, direct_ddo: bool, unheld: bool = False, chosen=PIPELINE_ARMS):
    """The weights of the ``chosen`` pipeline arms, from the (resumed) pipeline and the
    manifest, the target budget in tokens, and the pipeline's backtest record (None below
    three budgets)."""
    from autoscale_ds.formats.manifest import load_manifest
    from autoscale_ds.formats.schemas import load_mixture
    from autoscale_ds.orchestrate.pipeline import mixture_domains, run_pipeline
    from autoscale_ds.orchestrate.runner import run_sweep
    from autoscale_ds.orchestrate.sweep import named_weights
    from autoscale_ds.tables import human_tokens

    manifest = load_manifest(config.manifest)
    domains = mixture_domains(config, manifest)
    result = run_pipeline(config)
    largest = result.sweeps[-1].mixture
    predicted = load_mixture(result.mixture_path)
    makers = {"uniform": lambda: named_weights("uniform", domains, manifest),
              "tokens": lambda: named_weights("tokens", domains, manifest),
              "ddo": lambda: dict(largest.weights),
              "autoscale": lambda: dict(predicted.weights),
              "autoscale-plain": lambda: _plain_prediction(config, result)}
    names = {"ddo": f"ddo@{human_tokens(largest.total_tokens)}"}
    arms = {names.get(arm, arm): makers[arm]() for arm in PIPELINE_ARMS if arm in chosen}
    unheld_weights = _unheld_prediction(config, result) if unheld else None
    if unheld_weights is not None:  # what extrapolating the unmeasured trends would have trained
        arms["autoscale-unheld"] = unheld_weights
    if direct_ddo:
        direct = run_sweep(config.sweep(predicted.total_tokens)).mixture
        arms[f"ddo@{human_tokens(direct.total_tokens)}"] = dict(direct.weights)
    return arms, predicted.total_tokens, result.backtest


def method_arms(config, methods: List[str], out: Path) -> Tuple[Dict[str, Dict[str, float]], Dict[str, int]]:
    """The weights of the other methods' arms (``autoscale mix`` on the pipeline's corpus,
    domains, proxy model and executor; resumed like the pipeline) and their proxy tokens."""
    from autoscale_ds.formats.manifest import load_manifest
    from autoscale_ds.orchestrate.mix import run_mix
    from autoscale_ds.orchestrate.mix_config import mix_config_from
    from autoscale_ds.orchestrate.pipeline import mixture_domains

    domains = mixture_domains(config, load_manifest(config.manifest))
    weights, proxy_tokens = {}, {}
    for method in methods:
        settings = mix_settings(config, method, domains, out / "mix" / method)
        logger.info("arm %s: autoscale mix --method %s in %s", method, method, settings["output_dir"])
        result = run_mix(mix_config_from(settings, f"quality benchmark arm {method}"))
        weights[method] = {d: result.mixture.weights[d] for d in domains}
        proxy_tokens[method] = result.proxy_tokens_trained
    return weights, proxy_tokens


def mix_settings(config, method: str, domains: List[str], work_dir: Path) -> dict:
    """The `autoscale mix` settings of one method arm. Proxy sizes follow the pipeline's
    budgets so the methods spend compute of the same order: DoReMi's reference and proxy
    runs at the largest budget, RegMix's runs at the smallest."""
    budgets = sorted(config.budgets)
    settings = {"manifest": config.manifest, "method": method, "domains": list(domains),
                "out": str(work_dir / "mixture.json"), "output_dir": str(work_dir),
                "target_tokens": config.target_tokens, "train": dict(config.train),
                "executor": dict(config.executor)}
    if method == "doremi":
        settings["doremi"] = {"proxy_tokens": budgets[-1]}
    elif method == "regmix":
        settings["regmix"] = {"proxy_tokens": budgets[0], "runs": REGMIX_RUNS}
    elif method == "unimax":
        settings["max_epochs"] = 1
    return settings


def proxy_tokens_of(config, arms: Dict[str, Dict[str, float]], known: Dict[str, Optional[int]]):
    """Tokens each arm's method trained in proxies before its target run: ``known`` (the
    mix runs', the --arm files'), 0 for closed-form weights, else the pipeline's (its
    summary.json) for the DDO/AutoScale arms."""
    pipeline = _summary_tokens(Path(config.output_dir) / "summary.json")
    return {arm: known[arm] if arm in known else 0 if arm in ("uniform", "tokens") else pipeline
            for arm in arms}


def file_proxy_tokens(mixture_path: str) -> Optional[int]:
    """The proxy tokens behind a mixture file: its own provenance (``autoscale mix``), or the
    pipeline summary.json next to it; None when neither says."""
    provenance = json.loads(Path(mixture_path).read_text()).get("provenance") or {}
    if "proxy_tokens_trained" in provenance:
        return provenance["proxy_tokens_trained"]
    return _summary_tokens(Path(mixture_path).parent / "summary.json")


def _summary_tokens(path: Path) -> Optional[int]:
    return json.loads(path.read_text()).get("proxy_tokens_trained") if path.exists() else None


def extra_arms(specs: List[str], domains: List[str], existing) -> Dict[str, Dict[str, float]]:
    """``--arm NAME=MIXTURE.json``: each mixture's weights as an arm (same domains)."""
    from autoscale_ds.formats.schemas import load_mixture

    arms = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"quality benchmark: --arm expects NAME=MIXTURE.json, got {spec!r}")
        if name in existing or name in arms:
            raise SystemExit(f"quality benchmark: --arm {name}: an arm of that name exists")
        weights = load_mixture(path).weights
        if set(weights) != set(domains):
            raise SystemExit(f"quality benchmark: --arm {name}: {path} mixes {sorted(weights)}, "
                             f"the benchmark's domains are {sorted(domains)}")
        arms[name] = {d: weights[d] for d in domains}
    return arms


def _plain_prediction(config, result) -> Dict[str, float]:
    """The paper's method on the same proxy runs: each budget's plain DDO optimum, the plain
    predictor, the pipeline's guards."""
    from autoscale_ds.method.noise_aware import unshrunk
    from autoscale_ds.orchestrate.pipeline import guard_settings
    from autoscale_ds.method.predict import PredictGuards, predict

    prediction = predict([unshrunk(s.mixture) for s in result.sweeps],
                         target_tokens=config.target_tokens, steps=config.steps,
                         guards=PredictGuards(**guard_settings(config)), noise_aware=False)
    return dict(prediction.weights)


def _unheld_prediction(config, result):
    """The prediction without holding domains DDO kept at base, or None when none was held."""
    from autoscale_ds.orchestrate.pipeline import guard_settings, predict_noise_aware
    from autoscale_ds.method.predict import PredictGuards, predict

    if not any(r.guard == "held (no measured trend)" for r in result.prediction.report.values()):
        return None
    guards = PredictGuards(**dict(guard_settings(config), hold_unmeasured=False))
    prediction = predict([s.mixture for s in result.sweeps], target_tokens=config.target_tokens,
                         steps=config.steps, guards=guards,
                         noise_aware=predict_noise_aware(config))
    return dict(prediction.weights)


def _train_config(config, weights: Dict[str, float], target_tokens: float, seed: int,
                  run_dir: Path, evals: int, available_tokens: Optional[Dict[str, int]] = None):
    from autoscale_ds.orchestrate.sweep import sequence_and_batch, samples_to_tokens, whole_step_samples
    from autoscale_ds.train.config import TrainConfig

    settings = dict(config.train)
    seq_len, batch = sequence_and_batch(settings)
    samples = whole_step_samples({d: w * target_tokens for d, w in weights.items()}, seq_len, batch)
    steps = sum(samples.values()) // batch
    if available_tokens is not None:
        settings["max_epochs"] = arm_epoch_cap(settings.get("max_epochs"), samples, seq_len,
                                               available_tokens, run_dir.parent.name)
    settings.update(manifest=config.manifest, output_dir=str(run_dir), seed=seed,
                    run_id=run_dir.name, tokens_per_domain=samples_to_tokens(samples, seq_len),
                    eval_interval_steps=max(1, steps // evals), progress=False)
    return TrainConfig(**settings), seq_len * batch


def arm_epoch_cap(max_epochs: Optional[float], samples: Dict[str, int], seq_len: int,
                  available_tokens: Dict[str, int], arm: str) -> Optional[float]:
    """The arm's ``max_epochs``: the pipeline's (a proxy's guard), raised to the whole epochs
    the arm's mixture needs where it reads a domain past it. A method's answer is trained as it
    is, not refused (e.g. DoReMi putting most weight on a small domain); the report marks the
    arm REPEATS, as it then measures repetition too."""
    from autoscale_ds.data.samples import samples_per_epoch

    if max_epochs is None:
        return None
    needed = max(samples[d] / max(1, samples_per_epoch(available_tokens[d], seq_len)) for d in samples)
    if needed <= max_epochs:
        return max_epochs
    logger.warning("arm %s reads a domain %.2f times: trained with max_epochs=%d (REPEATS)",
                   arm, needed, math.ceil(needed))
    return float(math.ceil(needed))


def train_arms(config, weights: Dict[str, Dict[str, float]], target_tokens: float,
               seeds: List[int], out: Path, evals: int,
               available_tokens: Optional[Dict[str, int]] = None) -> Dict[str, List[dict]]:
    """The result rows of every arm, one per seed (in ``seeds`` order). Finished runs with
    the same config are reused; the missing ones run on the pipeline's executor (e.g. two
    local workers side by side), so the benchmark is as parallel as the proxies were."""
    from autoscale_ds.orchestrate.executors import make_executor
    from autoscale_ds.orchestrate.sweep import ProxyRun

    same_as = identical_arms(planned_tokens(config, weights, target_tokens))
    runs = {(arm, seed): ProxyRun(run_name(arm, seed), _train_config(
        config, w, target_tokens, seed, out / run_name(arm, seed), evals, available_tokens)[0])
        for arm, w in weights.items() if arm not in same_as for seed in seeds}
    missing = [run for run in runs.values()
               if _finished(run.output_dir, run.config.fingerprint()) is None]
    if missing:
        logger.info("training %d arm runs of %s tokens (%d reused)", len(missing),
                    f"{target_tokens:,.0f}", len(runs) - len(missing))
        started = time.monotonic()
        make_executor(config.executor).execute(missing, lambda run, row: logger.info(
            "%s: %s (%.0f s since start)", run.run_id, row["status"], time.monotonic() - started))
    for arm, twin in same_as.items():
        logger.info("arm %s has exactly the weights of %s: its runs are %s's", arm, twin, twin)
    return {arm: [_arm_row(runs[same_as.get(arm, arm), seed]) for seed in seeds] for arm in weights}


def planned_tokens(config, weights, target_tokens: float) -> Dict[str, Dict[str, int]]:
    """Each arm's whole training tokens per domain, as its runs will train them."""
    from autoscale_ds.orchestrate.sweep import sequence_and_batch, samples_to_tokens, whole_step_samples

    seq_len, batch = sequence_and_batch(dict(config.train))
    return {arm: samples_to_tokens(whole_step_samples(
        {d: v * target_tokens for d, v in w.items()}, seq_len, batch), seq_len)
        for arm, w in weights.items()}


def identical_arms(planned: Dict[str, Dict[str, int]]) -> Dict[str, str]:
    """{arm: the earlier arm that trains exactly the same tokens of every domain}: same
    tokens, same seed and the same config train the same model (weights that differ in the
    last float bit round to the same whole samples), so such an arm is not trained twice."""
    same_as = {}
    arms = list(planned)
    for index, arm in enumerate(arms):
        for earlier in arms[:index]:
            if earlier not in same_as and planned[earlier] == planned[arm]:
                same_as[arm] = earlier
                break
    return same_as


def _arm_row(run) -> dict:
    row = _finished(run.output_dir, run.config.fingerprint())
    if row is None:
        raise SystemExit(f"arm run {run.run_id} did not finish ok; see {run.output_dir} "
                         "(result.json / train.log)")
    return row


def run_name(arm: str, seed: int) -> str:
    """Where one arm/seed run lives under --out (also how messages name it)."""
    return f"arms/{arm.replace('@', '_at_')}/seed{seed}"


def _finished(run_dir: Path, fingerprint: str):
    path = run_dir / "result.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())["runs"][0]
    return row if row.get("config_fingerprint") == fingerprint and row["status"] == "ok" else None


# ---------------------------------------------------------------- figures (no training below)

def eval_set_record(rows: Dict[str, List[dict]], seeds: List[int]) -> Optional[dict]:
    """The one eval set every run was measured on ({fingerprint, tokens}), None when the runs
    predate eval-set fingerprints; InputError naming the runs when they differ."""
    from curves import shared_eval_fingerprint

    named = {run_name(arm, seed): row for arm, arm_rows in rows.items()
             for seed, row in zip(seeds, arm_rows)}
    fingerprint = shared_eval_fingerprint(named)
    if fingerprint is None:
        logger.warning("the runs record no eval-set fingerprint (trained by an older version): "
                       "cannot check that every arm was measured on the same eval set")
        return None
    tokens = next(iter(named.values()))["eval_set"].get("tokens")
    return {"fingerprint": fingerprint, "tokens": tokens}


def paired_comparisons(curves, bands, candidate: str = "autoscale") -> Dict[str, dict]:
    """Per baseline: the paired final-perplexity difference (candidate - baseline) with its
    t-interval, and the speed-up on the seed-mean curves and seed by seed."""
    from curves import final_averages, paired_difference, per_seed_speedups, speedup

    comparisons = {}
    for name in curves:
        if name == candidate:
            continue
        diff = paired_difference(final_averages(curves[candidate]), final_averages(curves[name]),
                                 CONFIDENCE)
        comparisons[name] = {
            "baseline_final_mean": float(bands[name].mean[-1]),
            "candidate_final_mean": float(bands[candidate].mean[-1]),
            "difference_per_seed": diff.per_seed, "difference_mean": diff.mean,
            "difference_interval": list(diff.interval) if diff.interval else None,
            "confidence": diff.confidence, "relative_difference": diff.relative,
            "verdict": diff.verdict(lower_is_better=True),
            "speedup_mean_curves": speedup(bands[candidate], bands[name]),
            "speedup_per_seed": per_seed_speedups(curves[candidate], curves[name])}
    return comparisons


def epochs_by_arm(rows: Dict[str, List[dict]], train_tokens_available: Dict[str, float]):
    """({arm: {domain: most epochs over seeds}}, {arm: domains read more than once})."""
    from curves import max_epochs, repeated_domains

    epochs = {arm: max_epochs(arm_rows, train_tokens_available) for arm, arm_rows in rows.items()}
    repeats = {arm: repeated_domains(e) for arm, e in epochs.items()}
    for arm, domains in repeats.items():
        if domains:
            logger.warning("arm %s reads %s more than once (%s epochs): it measures repetition, "
                           "not only the mixture", arm, domains,
                           ", ".join(f"{epochs[arm][d]:.2f}" for d in domains))
    return epochs, repeats


def noise_figures(curves, rows: Dict[str, List[dict]]) -> dict:
    """Seed spread of each arm's objective and the eval set's sampling error (halves)."""
    from curves import final_averages, halves_summary, seed_spread

    spreads = {arm: seed_spread(final_averages(c)) for arm, c in curves.items()}
    return {"seed_std": {arm: s.std for arm, s in spreads.items()},
            "seed_relative_std": {arm: s.relative_std for arm, s in spreads.items()},
            "eval_halves": halves_summary([r for arm_rows in rows.values() for r in arm_rows])}


def compare(rows: Dict[str, List[dict]], weights, seeds: List[int], tokens_per_step: int,
            train_tokens_available: Dict[str, float]):
    """Every figure of the benchmark from the arms' result rows: (quality.json payload, bands)."""
    from curves import final_averages, final_summary, run_curve, seed_band, speedup

    eval_set = eval_set_record(rows, seeds)  # first: nothing is compared across eval sets
    curves = {arm: [run_curve(r, tokens_per_step) for r in arm_rows] for arm, arm_rows in rows.items()}
    bands = {arm: seed_band(arm_curves) for arm, arm_curves in curves.items()}
    noise = noise_figures(curves, rows)
    summary = final_summary(bands)
    for entry in summary:
        entry["final_per_seed"] = final_averages(curves[entry["arm"]])
        entry["final_sample_std"] = noise["seed_std"][entry["arm"]]
    epochs, repeats = epochs_by_arm(rows, train_tokens_available)
    results = {"seeds": list(seeds), "eval_set": eval_set, "summary": summary,
               "speedup": {name: speedup(bands["autoscale"], band) for name, band in bands.items()
                           if name != "autoscale"},
               "paired": paired_comparisons(curves, bands), "epochs": epochs, "repeats": repeats,
               "noise": noise, "weights": weights,
               "curves": {name: {"tokens": b.tokens.tolist(), "mean": b.mean.tolist(), "std": b.std.tolist(),
                                 "per_domain_mean": {d: v.tolist() for d, v in b.per_domain_mean.items()}}
                          for name, b in bands.items()}}
    return results, bands


# ---------------------------------------------------------------- tables (from quality.json)

def markdown_table(headers, rows) -> str:
    """A Markdown table padded into columns: readable in a terminal, pasteable into the README.
    Cells are pre-formatted strings; numbers-looking columns are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(3, *(len(row[i]) for row in cells)) for i in range(len(headers))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row):
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w)
                                 for c, w, n in zip(row, widths, numeric)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + (":" if n else "-") for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *[line(row) for row in cells[1:]]])


def _looks_numeric(text: str) -> bool:
    return bool(text) and text.lstrip("+-−").replace(".", "", 1).replace("%", "").replace(",", "").isdigit()


def percent(value: Optional[float], places: int = 1, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.{places}f}%" if signed else f"{value * 100:.{places}f}%"


def _speedups(values) -> str:
    return " ".join("n/r" if v is None else f"{v:+.0%}" for v in values)


def print_report(results: dict) -> None:
    """The tables of quality.json, in the order a reader needs them."""
    summary = results["summary"]
    domains = list(summary[0]["per_domain"])
    seeds = " ".join(str(s) for s in results["seeds"])
    print("\nWeights")
    print(markdown_table(["arm", *domains], [[arm, *[f"{w[d]:.4f}" for d in domains]]
                                             for arm, w in results["weights"].items()]))
    for arm, twin in results.get("identical_arms", {}).items():
        print(f"({arm} trains exactly the tokens of {twin}: its runs are {twin}'s)")
    print(f"\nFinal validation perplexity at the target budget (seeds {seeds}; mean ± sample std)")
    relative_std = results["noise"]["seed_relative_std"]
    proxy = results.get("proxy_tokens", {})
    print(markdown_table(
        ["arm", "proxy tokens", "average", "seed std", *domains],
        [[_marked(s["arm"], results), _tokens(proxy.get(s["arm"])), _mean_std(s),
          percent(relative_std[s["arm"]]), *[f"{s['per_domain'][d]:.2f}" for d in domains]]
         for s in summary]))
    _print_epochs(results)
    _print_paired(results)
    _print_noise(results)
    _print_backtest(results.get("backtest"))


def _tokens(count: Optional[int]) -> str:
    from autoscale_ds.tables import human_tokens

    return "n/a" if count is None else ("0" if count == 0 else human_tokens(count))


def _marked(arm: str, results: dict) -> str:
    """The arm's name, marked when it read some domain more than once."""
    return f"{arm} (REPEATS)" if results["repeats"].get(arm) else arm


def _mean_std(entry: dict) -> str:
    std = entry.get("final_sample_std")
    return f"{entry['final_mean']:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _print_epochs(results: dict) -> None:
    epochs = results["epochs"]
    domains = list(next(iter(epochs.values())))
    print("\nEpochs read per domain (most over seeds; REPEATS: some tokens were read again)")
    repeats = results["repeats"]
    print(markdown_table(["arm", *domains, "repeats"],
                         [[arm, *[f"{e[d]:.2f}" for d in domains],
                           "REPEATS " + ", ".join(repeats[arm]) if repeats[arm] else "-"]
                          for arm, e in epochs.items()]))


def _print_paired(results: dict) -> None:
    seeds = len(results["seeds"])
    print(f"\nAutoScale vs each baseline, paired by seed ({seeds} seeds): difference = autoscale - "
          f"baseline final average perplexity\n(negative: AutoScale lower, better), with its "
          f"{CONFIDENCE:.0%} t-interval over seeds; verdict: whether the interval excludes 0")
    print("Speed-up of AutoScale = 1 - tokens to reach the baseline's final average perplexity / "
          "baseline tokens (n/r: not reached)")
    rows = [[_marked(name, results), *_paired_cells(c)] for name, c in results["paired"].items()]
    print(markdown_table(["baseline", "baseline ppl", "difference", f"{CONFIDENCE:.0%} interval",
                          "relative diff", "verdict", "speed-up (mean curves)", "speed-up per seed"],
                         rows))
    if seeds == 1:
        print("One seed: no interval, the difference cannot be told from noise; use --seeds 3.")


def _paired_cells(c: dict) -> List[str]:
    interval = c["difference_interval"]
    return [f"{c['baseline_final_mean']:.2f}", f"{c['difference_mean']:+.2f}",
            "n/a (1 seed)" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]",
            percent(c["relative_difference"], signed=True), c["verdict"],
            "n/r" if c["speedup_mean_curves"] is None else f"{c['speedup_mean_curves']:+.1%}",
            _speedups(c["speedup_per_seed"])]


def _print_noise(results: dict) -> None:
    noise, eval_set = results["noise"], results["eval_set"]
    spreads = [v for v in noise["seed_relative_std"].values() if v is not None]
    print("\nNoise")
    if spreads:
        print(f"- seed-to-seed relative std of an arm's final average perplexity: "
              f"{percent(min(spreads))} to {percent(max(spreads))}")
    halves = noise["eval_halves"]
    if halves is None:
        print("- eval sampling error: not recorded by these runs (no eval_halves)")
    else:
        print(f"- eval sampling error: the objective on the eval set's two disjoint halves differs "
              f"by {percent(halves['mean'], 2)} (mean over {halves['runs']} run(s), max "
              f"{percent(halves['max'], 2)})")
    if eval_set is None:
        print("- eval set: not fingerprinted by these runs (cannot check it is shared)")
    else:
        tokens = eval_set.get("tokens") or {}
        print(f"- eval set: {eval_set['fingerprint'][:12]}, shared by every run"
              + (f" ({sum(tokens.values()):,} tokens)" if tokens else ""))


def _print_backtest(backtest: Optional[dict]) -> None:
    if backtest is None:
        print("\nBacktest: none (it needs three or more proxy budgets)")
        return
    from autoscale_ds.cli.predict import backtest_table

    print("\nBacktest of the pipeline (the largest proxy budget predicted from the smaller ones)")
    print(backtest_table(backtest))


def plot(bands, path: Path) -> Path:
    from autoscale_ds.method.plots import pyplot, save_figure

    plt = pyplot()
    domains = list(next(iter(bands.values())).per_domain_mean)
    columns = 1 + len(domains)
    figure, axes = plt.subplots(1, columns, figsize=(4 * columns, 3.6), squeeze=False)
    for name, band in bands.items():
        millions = band.tokens / 1e6
        line, = axes[0][0].plot(millions, band.mean, label=name)
        axes[0][0].fill_between(millions, band.mean - band.std, band.mean + band.std,
                                color=line.get_color(), alpha=0.2)
        for axis, domain in zip(axes[0][1:], domains):
            axis.plot(millions, band.per_domain_mean[domain], color=line.get_color())
    axes[0][0].set_title("average (band: ±1 std over seeds)")
    for axis, title in zip(axes[0][1:], domains):
        axis.set_title(title)
    for axis in axes[0]:
        axis.set_xlabel("training tokens (M)")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("validation perplexity")
    axes[0][0].legend(fontsize="small")
    return save_figure(figure, path)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args()
    out = Path(args.out)
    config = pipeline_config(args, out)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    weights, target_tokens, backtest = arm_weights(config, args.direct_ddo, args.unheld, args.arms)
    methods, method_tokens = method_arms(config, [a for a in args.arms if a in METHOD_ARMS], out)
    weights.update(methods)
    weights.update(extra_arms(args.arm, list(weights["autoscale"]), weights))
    from autoscale_ds.atomic import atomic_write_json
    from autoscale_ds.formats.manifest import load_manifest
    from autoscale_ds.errors import InputError
    from autoscale_ds.orchestrate.sweep import sequence_and_batch

    manifest = load_manifest(config.manifest)
    available = {d: e.train.tokens for d, e in manifest.domains.items()}
    rows = train_arms(config, weights, target_tokens, seeds, out, args.evals, available)
    seq_len, batch = sequence_and_batch(config.train)
    try:
        results, bands = compare(rows, weights, seeds, seq_len * batch, available)
    except InputError as exc:  # e.g. runs measured on different eval sets
        raise SystemExit(f"quality benchmark: {exc}") from None
    results["backtest"] = backtest
    method_tokens.update({spec.partition("=")[0]: file_proxy_tokens(spec.partition("=")[2])
                          for spec in args.arm})
    if args.direct_ddo:  # its own sweep at the target: not counted here
        from autoscale_ds.tables import human_tokens

        method_tokens[f"ddo@{human_tokens(target_tokens)}"] = None
    results["proxy_tokens"] = proxy_tokens_of(config, weights, method_tokens)
    results["identical_arms"] = identical_arms(planned_tokens(config, weights, target_tokens))
    print_report(results)
    atomic_write_json(out / "quality.json", results)
    print(f"\ncurves: {plot(bands, out / 'quality_curves.png')}\nresults: {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
