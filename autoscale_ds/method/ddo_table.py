"""The DDO table for people: weights, fits, and whether noise could explain each move.

Built from a DDO mixture's provenance, so ``autoscale ddo``, ``autoscale ddo-run`` and the
pipeline's report.md show the same columns. When the noise level is unknown the table says
so in words: blank interval columns would read as "no uncertainty".
"""

from typing import List, Optional, Tuple

from ..formats.schemas import Mixture
from .sensitivity import SKIPPED_OFF
from ..tables import format_markdown_table, format_table

NO_INTERVAL = "n/a"
CLI_SIGMA_HINT = "repeat the base run over seeds or pass --noise-sigma"
CONFIG_SIGMA_HINT = "repeat the base run over seeds (seeds: [0, 1]) or set ddo: {noise_sigma: S}"


def ddo_rows(mixture: Mixture) -> Tuple[List[str], List[list]]:
    """Headers and one row per domain: base and DDO weight, ratio, bound, fit, noise."""
    provenance = mixture.provenance
    base_tokens = provenance["base_tokens"]
    base_total = sum(base_tokens.values())
    sensitivity = provenance.get("sensitivity", {})
    intervals = sensitivity.get("weights", {})
    shrunk = _noise_aware_record(mixture)
    optimum = shrunk["unshrunk_weights"] if shrunk else mixture.weights
    rows = []
    for domain, weight in mixture.weights.items():
        fit = provenance["fits"][domain]
        fit_text = "flat" if fit["flat"] else f"a={fit['a']:.3g} b={fit['b']:.3g}"
        row = [domain, base_tokens[domain] / base_total, optimum[domain], provenance["ratios"][domain],
               provenance["active_bounds"][domain] or "", fit_text,
               *_noise_cells(intervals.get(domain))]
        if shrunk:
            row += [f"{shrunk['factors'][domain]:.2f}", weight]
        rows.append(row)
    coverage_pct = int(sensitivity.get("coverage", 0.9) * 100)
    headers = ["domain", "base w", "DDO w", "ratio", "bound", "fit",
               f"{coverage_pct}% interval", "within noise"]
    if shrunk:
        headers += ["move kept", "noise-aware w"]
    return headers, rows


def _noise_aware_record(mixture: Mixture) -> Optional[dict]:
    record = mixture.provenance.get("noise_aware")
    return record if isinstance(record, dict) and record.get("applied") else None


def _noise_cells(interval: Optional[dict]) -> List[str]:
    if not interval:
        return [NO_INTERVAL, NO_INTERVAL]
    within = "yes" if interval["move_within_noise"] else "no"
    return [f"[{interval['lo']:.3f}, {interval['hi']:.3f}]", within]


def noise_line(mixture: Mixture, sigma_hint: str) -> str:
    """One line saying how the intervals were made, or why there are none."""
    sensitivity = mixture.provenance.get("sensitivity", {})
    if "relative_sigma" in sensitivity:
        coverage_pct = int(sensitivity["coverage"] * 100)
        line = (f"noise: relative sigma {sensitivity['relative_sigma']:.3g} "
                f"({sensitivity['sigma_source']}), {sensitivity['draws']} draws; "
                f"within noise = base weight inside the {coverage_pct}% interval")
        shrunk = _noise_aware_record(mixture)
        if shrunk:
            line += (f"; noise-aware: each move from the base kept by its share (empirical "
                     f"Bayes, prior std of a log move {shrunk['prior_std']:.3g})")
        return line
    if sensitivity.get("skipped") == SKIPPED_OFF:
        return "noise: not assessed (0 sensitivity draws)"
    return f"noise: unknown -- {sigma_hint}"


def ddo_table(mixture: Mixture, sigma_hint: str = CLI_SIGMA_HINT) -> str:
    """Plain-text table and noise line (CLI output)."""
    return format_table(*ddo_rows(mixture)) + "\n" + noise_line(mixture, sigma_hint)


def ddo_markdown(mixture: Mixture, sigma_hint: str = CONFIG_SIGMA_HINT) -> List[str]:
    """Markdown table and noise line (report.md)."""
    return format_markdown_table(*ddo_rows(mixture)) + ["", noise_line(mixture, sigma_hint)]
