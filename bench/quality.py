"""Does the AutoScale mixture train a better model at the target budget? (AutoScale paper, Sec. 5)

Runs (or reuses) the pipeline of a config, then trains at its target budget, each arm over
several seeds, with validation every few steps:

  uniform        equal weights
  tokens         weights proportional to each domain's training tokens
  ddo@<largest>  the DDO optimum of the largest proxy budget, reused as it is (common practice)
  autoscale      the predicted mixture
  autoscale-unheld  the prediction that extrapolates domains DDO kept at base (only when
                 the prediction held some: it shows what the hold changed)
  ddo@<target>   DDO run directly at the target budget (--direct-ddo; 2m+1 target-size runs)

It prints the final average and per-domain validation perplexity (mean ± std over seeds) and
the speed-up per baseline: 1 - tokens AutoScale needs to reach the baseline's final average
perplexity / the baseline's tokens; and draws the curves. It asserts nothing about the result.

    python bench/quality.py                  # the demo's setup (built-in corpus, 3M tokens), 3 seeds
    python bench/quality.py --quick          # a quarter of its budgets, 4 domains, 2 seeds
    python bench/quality.py --config AUTOSCALE.yaml --seeds 3 --direct-ddo   # your own setup

Every arm/seed run is kept under --out and reused when its config is unchanged, so an
interrupted benchmark continues where it stopped.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List

logger = logging.getLogger("quality")

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo_pipeline.yaml"
# --quick: the demo's corpus and model at a quarter of its budgets, 4 domains, 2 seeds.
QUICK_OVERRIDES = {"budgets": [40_000, 80_000], "target_tokens": 320_000,
                   "domains": ["code", "docstrings", "comments", "reference"]}


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pipeline config (YAML); default: the demo's on the built-in corpus")
    parser.add_argument("--quick", action="store_true", help="the demo's setup at a quarter of its budgets")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; --quick: 2)")
    parser.add_argument("--evals", type=int, default=10, help="evaluations per training run")
    parser.add_argument("--direct-ddo", action="store_true",
                        help="also run DDO directly at the target budget (2m+1 target-size runs)")
    parser.add_argument("--out", default="bench_results/quality", help="runs, curves and results")
    return parser.parse_args()


def _pipeline_config(args, out: Path):
    """The given pipeline config, or the demo's (examples/demo_pipeline.yaml) on the built-in
    corpus prepared under --out, cut down with --quick."""
    from autoscale_ds.orchestrate.pipeline import load_pipeline_config

    if args.config:
        return load_pipeline_config(args.config)
    overrides = {"manifest": _builtin_manifest(out / "prepared"), "output_dir": str(out / "pipeline"),
                 "export": {"formats": []}}
    if args.quick:
        overrides.update(QUICK_OVERRIDES)
    return load_pipeline_config(DEMO_CONFIG, overrides)


def _builtin_manifest(out_dir: Path) -> str:
    """The demo's corpus (scripts/demo.sh): 5 built-in domains, 2000-piece tokenizer."""
    from autoscale_ds.data.builtin_corpus import build_builtin_corpus
    from autoscale_ds.data.prepare import PrepareConfig, prepare

    specs = build_builtin_corpus(out_dir.parent / "raw", 1_000_000)
    manifest = prepare(PrepareConfig(out_dir=str(out_dir), domains=specs, train_vocab_size=2000,
                                     progress=False))
    return str(manifest.root / "manifest.yaml")


def arm_weights(config, direct_ddo: bool):
    """The weights of every arm, from the (resumed) pipeline and the manifest, and the
    target budget in tokens."""
    from autoscale_ds.data.manifest import load_manifest
    from autoscale_ds.formats import load_mixture
    from autoscale_ds.orchestrate.pipeline import mixture_domains, run_pipeline
    from autoscale_ds.orchestrate.runner import run_sweep
    from autoscale_ds.orchestrate.sweep import named_weights
    from autoscale_ds.tables import human_tokens

    manifest = load_manifest(config.manifest)
    domains = mixture_domains(config, manifest)
    result = run_pipeline(config)
    largest = result.sweeps[-1].mixture
    predicted = load_mixture(result.mixture_path)
    arms = {"uniform": named_weights("uniform", domains, manifest),
            "tokens": named_weights("tokens", domains, manifest),
            f"ddo@{human_tokens(largest.total_tokens)}": dict(largest.weights),
            "autoscale": dict(predicted.weights)}
    unheld = _unheld_prediction(config, result)
    if unheld is not None:  # what extrapolating the unmeasured trends would have trained
        arms["autoscale-unheld"] = unheld
    if direct_ddo:
        direct = run_sweep(config.sweep(predicted.total_tokens)).mixture
        arms[f"ddo@{human_tokens(direct.total_tokens)}"] = dict(direct.weights)
    return arms, predicted.total_tokens


def _unheld_prediction(config, result):
    """The prediction without holding domains DDO kept at base, or None when none was held."""
    from autoscale_ds.predict import PredictGuards, predict

    if not any(r.guard == "held (no measured trend)" for r in result.prediction.report.values()):
        return None
    guards = PredictGuards(**dict(config.predict, hold_unmeasured=False))
    prediction = predict([s.mixture for s in result.sweeps], target_tokens=config.target_tokens,
                         steps=config.steps, guards=guards)
    return dict(prediction.weights)


def _train_config(config, weights: Dict[str, float], target_tokens: float, seed: int,
                  run_dir: Path, evals: int):
    from autoscale_ds.orchestrate.sweep import sequence_and_batch, samples_to_tokens, whole_step_samples
    from autoscale_ds.train.config import TrainConfig

    settings = dict(config.train)
    seq_len, batch = sequence_and_batch(settings)
    samples = whole_step_samples({d: w * target_tokens for d, w in weights.items()}, seq_len, batch)
    steps = sum(samples.values()) // batch
    settings.update(manifest=config.manifest, output_dir=str(run_dir), seed=seed,
                    run_id=run_dir.name, tokens_per_domain=samples_to_tokens(samples, seq_len),
                    eval_interval_steps=max(1, steps // evals), progress=False)
    return TrainConfig(**settings), seq_len * batch


def train_arm(config, arm: str, weights, target_tokens: float, seeds: List[int], out: Path,
              evals: int):
    """Validation curves of one arm, one per seed; finished runs with the same config are
    reused."""
    from autoscale_ds.curves import run_curve
    from autoscale_ds.train.trainer import Trainer

    curves = []
    for seed in seeds:
        run_dir = out / "arms" / arm.replace("@", "_at_") / f"seed{seed}"
        train_config, tokens_per_step = _train_config(config, weights, target_tokens, seed, run_dir,
                                                     evals)
        row = _finished(run_dir, train_config.fingerprint())
        if row is None:
            logger.info("arm %s seed %d: training %s tokens", arm, seed,
                        f"{sum(train_config.tokens_per_domain.values()):,}")
            started = time.monotonic()
            row = Trainer(train_config).run()
            logger.info("arm %s seed %d: %s in %.0f s", arm, seed, row["status"], time.monotonic() - started)
        if row["status"] != "ok":
            raise SystemExit(f"arm {arm} seed {seed} failed: {row.get('reason')}; see {run_dir}")
        curves.append(run_curve(row, tokens_per_step))
    return curves


def _finished(run_dir: Path, fingerprint: str):
    path = run_dir / "result.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())["runs"][0]
    return row if row.get("config_fingerprint") == fingerprint and row["status"] == "ok" else None


def _per_seed_speedups(curves, baseline: str) -> List[str]:
    """The speed-up seed by seed (same seed: same init and sample order in both arms)."""
    from autoscale_ds.curves import seed_band, speedup

    values = [speedup(seed_band([a]), seed_band([b])) for a, b in zip(curves["autoscale"], curves[baseline])]
    return ["n/r" if v is None else f"{v:+.0%}" for v in values]


def report(curves, bands, weights) -> dict:
    from autoscale_ds.curves import final_summary, speedup
    from autoscale_ds.tables import format_table

    summary = final_summary(bands)
    domains = list(summary[0]["per_domain"])
    print("\nWeights")
    print(format_table(["arm", *domains], [[arm, *[f"{w[d]:.4f}" for d in domains]]
                                           for arm, w in weights.items()]))
    print("\nFinal validation perplexity at the target budget (mean ± std over seeds)")
    print(format_table(["arm", "seeds", "average", *domains],
                       [[s["arm"], s["seeds"], f"{s['final_mean']:.2f} ± {s['final_std']:.2f}",
                         *[f"{s['per_domain'][d]:.2f}" for d in domains]] for s in summary]))
    speedups = {name: speedup(bands["autoscale"], band) for name, band in bands.items()
                if name != "autoscale"}
    print("\nSpeed-up of AutoScale = 1 - tokens to reach the baseline's final average "
          "perplexity / baseline tokens")
    print(format_table(["baseline", "final avg ppl", "speed-up (mean curves)", "per seed"],
                       [[name, f"{bands[name].mean[-1]:.2f}",
                         "not reached" if value is None else f"{value:+.1%}",
                         " ".join(_per_seed_speedups(curves, name))]
                        for name, value in speedups.items()]))
    return {"summary": summary, "speedup": speedups, "weights": weights,
            "curves": {name: {"tokens": b.tokens.tolist(), "mean": b.mean.tolist(), "std": b.std.tolist(),
                              "per_domain_mean": {d: v.tolist() for d, v in b.per_domain_mean.items()}}
                       for name, b in bands.items()}}


def plot(bands, path: Path) -> Path:
    from autoscale_ds.plots import pyplot, save_figure

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
    config = _pipeline_config(args, out)
    seeds = list(range(args.seeds or (2 if args.quick else 3)))
    weights, target_tokens = arm_weights(config, args.direct_ddo)
    from autoscale_ds.curves import seed_band

    curves = {arm: train_arm(config, arm, w, target_tokens, seeds, out, args.evals)
              for arm, w in weights.items()}
    bands = {arm: seed_band(arm_curves) for arm, arm_curves in curves.items()}
    results = report(curves, bands, weights)
    from autoscale_ds.atomic import atomic_write_json

    atomic_write_json(out / "quality.json", results)
    print(f"\ncurves: {plot(bands, out / 'quality_curves.png')}\nresults: {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
