"""Proxy tokens trained by the pipeline's plan, WSD families against independent cosine runs.

Plans (no training) the demo's pipeline at 2 and 3 budgets (x2 spacing), on 4 and on all 6
domains of a prepared built-in corpus, under ``proxy_schedule: cosine`` and ``wsd``, and prints
the tokens each plan trains and their ratio (what ``summary.json`` reports after a run).

Run: python bench/bench_wsd_tokens.py --manifest PREPARED/manifest.yaml
(``python bench/quality.py --quick`` prepares one under bench_results/quality/prepared)
"""

import argparse
import logging
import tempfile
from pathlib import Path

from autoscale_ds.orchestrate.pipeline import check_pipeline, load_pipeline_config

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo_pipeline.yaml"
FOUR_DOMAINS = ["fiction", "dictionary", "code", "chat"]


def planned_tokens(manifest: str, budgets, domains, schedule: str):
    overrides = {"manifest": manifest, "output_dir": tempfile.mkdtemp(), "budgets": budgets,
                 "proxy_schedule": schedule}
    if domains:
        overrides["domains"] = domains
    plans = check_pipeline(load_pipeline_config(DEMO_CONFIG, overrides)).plans
    runs = [run for plan in plans.values() for run in plan]
    return sum(run.tokens_trained for run in runs), len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="a prepared built-in corpus")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("| budgets | domains | runs | cosine | wsd | wsd / cosine |")
    print("|---|---|---|---|---|---|")
    for budgets in ([40_000, 80_000], [40_000, 80_000, 160_000]):
        for domains in (FOUR_DOMAINS, None):
            wsd, runs = planned_tokens(args.manifest, budgets, domains, "wsd")
            cosine, _ = planned_tokens(args.manifest, budgets, domains, "cosine")
            print(f"| {budgets} | {len(domains) if domains else 'all'} | {runs} | {cosine:,} | "
                  f"{wsd:,} | {wsd / cosine:.3f} |")


if __name__ == "__main__":
    main()
