"""The pipeline's Markdown report and its plots."""

import json
import logging
from pathlib import Path
from typing import Dict, Optional

from ..atomic import atomic_write_text
from ..method.ddo_table import ddo_markdown
from ..tables import format_markdown_table, human_tokens

logger = logging.getLogger(__name__)


def write_report(out: Path, sweeps, prediction, mixture, mixture_path: Path,
                 exports: Dict[str, Path], into: Optional[Path] = None,
                 backtest: Optional[dict] = None) -> Path:
    """``report.md`` and its plots, with links relative to ``out``, written to ``into``
    (default ``out``; the pipeline renders into a staging folder, then publishes)."""
    from ..method.plots import plot_weights

    into = Path(into or out)
    plot_weights([s.mixture for s in sweeps] + [mixture], into / "weights.png")
    plot_loss_curves(sweeps, into / "loss_curves.png")
    lines = [f"# AutoScale report: mixture for {human_tokens(mixture.total_tokens)} tokens", ""]
    lines += _weights_table(sweeps, prediction)
    lines += ["", f"Predicted mixture: `{mixture_path.name}` (s = {prediction.s:.3f}; "
              f"log-linear RMS residual {prediction.model.rms_log_residual:.3g}).", ""]
    lines += _noise_aware_lines(mixture)
    lines += _backtest_lines(backtest)
    lines += ["## Weights across budgets", "", "![weights](weights.png)", ""]
    lines += ["## DDO at each budget: fitted responses, weights and noise", ""]
    for sweep in sweeps:
        rel = (sweep.mixture_path.parent / "responses.png").relative_to(out)
        lines += [f"### {human_tokens(sweep.mixture.total_tokens)} tokens", "", f"![responses]({rel})", ""]
        lines += ddo_markdown(sweep.mixture) + [""]
        if sweep.failed or sweep.pinned:
            lines += [f"Failed runs: {', '.join(sweep.failed) or 'none'}; kept at base: "
                      f"{', '.join(f'{d} ({why})' for d, why in sweep.pinned.items()) or 'none'}.", ""]
    lines += ["## Per-domain validation loss of the base runs", "", "![loss curves](loss_curves.png)", ""]
    lines += ["## Exports", ""] + [f"- `{fmt}`: `{path.relative_to(out)}`" for fmt, path in exports.items()]
    path = into / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _noise_aware_lines(mixture) -> list:
    record = mixture.provenance.get("noise_aware", {})
    if not record.get("applied"):
        return [f"Prediction: {record.get('reason', 'plain (the paper rule)')}.", ""]
    return [f"Noise-aware prediction: each domain keeps the share \"kept\" of its extrapolated "
            f"change past the largest budget (empirical Bayes on the trend per doubling, prior "
            f"std {record['prior_std_per_doubling']:.3g}); 0 keeps the largest budget's weight, 1 "
            "is the paper's rule.", ""]


def _backtest_lines(backtest: Optional[dict]) -> list:
    from ..method.backtest import domain_rows, summary_rows

    if backtest is None:
        return ["No backtest: it needs three or more DDO budgets.", ""]
    held_out = human_tokens(backtest["held_out_budget"])
    lines = ["## Backtest: the largest budget predicted from the smaller ones", "",
             f"The {held_out}-token DDO mixture predicted from "
             f"{', '.join(human_tokens(b) for b in backtest['input_budgets'])} (`backtest.json`):", "",
             *format_markdown_table(*summary_rows(backtest)), "",
             *format_markdown_table(*domain_rows(backtest))]
    return lines + ["", "Each method is judged against its own DDO mixture at the held-out budget "
                    "(noise-aware: the shrunk one; plain: the optimum as fitted). Predicted "
                    "objective loss: the held-out budget's fitted DDO objective at the predicted "
                    "weights minus at its DDO weights (a fraction of the base run's objective; > 0: "
                    "worse).", ""]


def _kept_note(budgets) -> str:
    if not budgets:
        return ""
    return "kept at base @" + ", ".join(human_tokens(b) for b in budgets) + " (not a measured optimum)"


def _weights_table(sweeps, prediction):
    budgets = [human_tokens(s.mixture.total_tokens) for s in sweeps]
    header = ["domain", *[f"DDO @{b}" for b in budgets], f"AutoScale @{human_tokens(prediction.total_tokens)}",
              "trend/doubling", "kept", "change/doubling", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for domain, r in prediction.report.items():
        note = "; ".join(n for n in ("leaves proxy range" if r.leaves_proxy_range else "",
                                     f"guard: {r.guard}" if r.guard else "",
                                     "trend within noise" if r.trend_within_noise else "",
                                     _kept_note(r.kept_at_base_at)) if n)
        cells = [domain, *[f"{w:.4f}" for w in r.proxy_weights], f"{r.weight:.4f}",
                 _trend_text(r), "-" if r.shrinkage is None else f"{r.shrinkage:.2f}",
                 f"x{r.predicted_change_per_doubling:.3f}", note]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _trend_text(report) -> str:
    if report.trend_per_doubling is None:
        return "-"
    noise = "" if report.trend_noise is None else f" (log sd {report.trend_noise:.2f})"
    return f"x{report.trend_per_doubling:.3f}{noise}"


def plot_loss_curves(sweeps, path: Path) -> Path:
    """Per-domain eval loss against tokens seen, for each budget's first base run."""
    from ..method.plots import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for style, sweep in zip(("-", "--", ":", "-."), sweeps):
        evals, tokens_per_step = _base_evals(sweep)
        for index, domain in enumerate(sweep.mixture.weights):
            points = [(e["step"] * tokens_per_step, e["loss"][domain]) for e in evals if domain in e["loss"]]
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, style, marker="o", color=f"C{index % 10}",
                          label=f"{domain} @{human_tokens(sweep.mixture.total_tokens)}")
    axis.set_xlabel("training tokens")
    axis.set_ylabel("validation loss (nats/token)")
    if axis.get_legend_handles_labels()[0]:  # runs without evals draw nothing to label
        axis.legend(fontsize=6, ncol=2)
    return save_figure(figure, path)


def _base_evals(sweep):
    base_id = sweep.mixture.provenance.get("base_runs", ["base-s0"])[0]
    result = sweep.runs_path.parent / "runs" / base_id / "result.json"
    try:
        row = json.loads(result.read_text())["runs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return [], 1
    total_tokens = sum(row["train_tokens"].values())
    return row.get("evals", []), total_tokens / max(row.get("steps") or 1, 1)
