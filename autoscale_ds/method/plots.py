"""PNG plots: each domain's fitted DDO response, and the weights across budgets."""

import logging
import math
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from ..formats.schemas import Mixture
from ..tables import human_tokens

logger = logging.getLogger(__name__)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Lay out, write (creating the directory) and free a figure."""
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return Path(path)


def plot_mixtures(mixtures: Sequence[Tuple[str, Mixture]], out_dir: Path) -> List[Path]:
    """Response plots for every mixture that carries DDO fits; one weights plot for all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for _, mixture in mixtures:
        if isinstance(mixture.provenance.get("fits"), dict) and mixture.provenance["fits"]:
            written.append(plot_responses(mixture, out_dir / f"responses_{human_tokens(mixture.total_tokens)}.png"))
    written.append(plot_weights([m for _, m in mixtures], out_dir / "weights.png"))
    return written


def plot_responses(mixture: Mixture, path: Path) -> Path:
    """One panel per domain: observed relative objective, fitted curve, bounds, optimum."""
    plt = pyplot()
    fits = mixture.provenance["fits"]
    columns = min(4, len(fits))
    rows = math.ceil(len(fits) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    for axis, (domain, fit) in zip(axes.flat, fits.items()):
        _draw_response(axis, domain, fit, mixture.provenance)
    for axis in list(axes.flat)[len(fits):]:
        axis.set_visible(False)
    figure.suptitle(f"DDO responses at {human_tokens(mixture.total_tokens)} tokens")
    return save_figure(figure, path)


def _draw_response(axis, domain: str, fit: dict, provenance: dict) -> None:
    x_points = np.asarray(fit.get("x") or [], dtype=float)
    y_points = np.asarray(fit.get("y") or [], dtype=float)
    lo, hi = provenance.get("bounds", {}).get(domain, [x_points.min(initial=1.0), x_points.max(initial=1.0)])
    grid = np.geomspace(max(min(lo, x_points.min(initial=lo)) * 0.8, 1e-3),
                        max(hi, x_points.max(initial=hi)) * 1.2, 200)
    curve = np.power(grid + fit["a"], -fit["b"]) + fit["c"]
    axis.axvspan(lo, hi, color="0.92", label="bounds")
    axis.plot(grid, curve, color="C0", label="flat fit" if fit.get("flat") else "fit")
    axis.scatter(x_points, y_points, color="C3", zorder=3, s=18, label="runs")
    optimum = provenance.get("ratios", {}).get(domain)
    if optimum is not None:
        axis.axvline(optimum, color="C2", linestyle="--", label=f"optimum x={optimum:.2f}")
    axis.set_xscale("log")
    _label_ratios(axis, np.unique(np.concatenate([x_points, [lo, hi]])))
    axis.set_title(domain, fontsize=10)
    axis.set_xlabel("tokens / base tokens")
    axis.set_ylabel("objective / base")
    axis.legend(fontsize=6)


def _label_ratios(axis, ratios: np.ndarray) -> None:
    # Log axes spanning less than a decade get crowded minor labels; label the tried ratios.
    from matplotlib.ticker import FixedLocator, NullFormatter

    axis.xaxis.set_major_locator(FixedLocator(ratios))
    axis.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    axis.xaxis.set_minor_formatter(NullFormatter())


def plot_weights(mixtures: Sequence[Mixture], path: Path) -> Path:
    """Weight of each domain against total budget; predicted mixtures drawn hollow."""
    plt = pyplot()
    ordered = sorted(mixtures, key=lambda m: m.total_tokens)
    domains = list(ordered[0].weights)
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    budgets = [m.total_tokens for m in ordered]
    for index, domain in enumerate(domains):
        weights = [m.weights.get(domain, np.nan) for m in ordered]
        color = f"C{index % 10}"
        axis.plot(budgets, weights, color=color, label=domain)
        for m, w in zip(ordered, weights):
            predicted = m.method != "ddo"
            axis.scatter([m.total_tokens], [w], color="white" if predicted else color,
                         edgecolors=color, zorder=3)
            _draw_interval(axis, m, domain, color)
    axis.set_xscale("log")
    axis.set_xlabel("total training tokens")
    axis.set_ylabel("domain weight")
    axis.set_title("Mixture weights across budgets (hollow: predicted)")
    axis.legend(fontsize=7, ncol=2)
    return save_figure(figure, path)


def _draw_interval(axis, mixture: Mixture, domain: str, color: str) -> None:
    entry = mixture.provenance.get("sensitivity", {}).get("weights", {}).get(domain)
    if isinstance(entry, dict) and "lo" in entry and "hi" in entry:
        axis.vlines(mixture.total_tokens, entry["lo"], entry["hi"], color=color, alpha=0.5)


def plot_doremi_trajectory(trajectory, path: Path, title: str = "DoReMi domain weights") -> Path:
    """DoReMi's weights against the update step, one colour per domain: the weights after
    each update (solid) and their running average (dashed; its last value is the output).
    ``trajectory``: a ``doremi_weights.jsonl`` path or ``read_trajectory``'s (steps, weights)."""
    from .doremi import read_trajectory, running_average

    steps, weights = read_trajectory(trajectory) if isinstance(trajectory, (str, Path)) else trajectory
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    averages = running_average(weights)
    for index, (domain, values) in enumerate(weights.items()):
        color = f"C{index % 10}"
        axis.plot(steps, values, color=color, linewidth=1.2, label=domain)
        axis.plot(steps, averages[domain], color=color, linestyle="--", linewidth=1.2,
                  label=f"{domain} (average {averages[domain][-1]:.3f})" if len(values) else domain)
    axis.set_xlabel("update step")
    axis.set_ylabel("domain weight")
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(fontsize=7, ncol=2, loc="center right")
    return save_figure(figure, path)
