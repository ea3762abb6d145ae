"""The ``autoscale plot`` sub-command: fitted responses and weights across budgets."""

from pathlib import Path

from ..console import emit
from ..errors import InputError
from ..formats.schemas import load_mixture
from .common import writing


_PLOT_EXAMPLE = """example:
  autoscale plot mixture_0.5M.json mixture_1.5M.json mixture_10B.json --out-dir plots/
"""


def register(commands, formatter):
    p = commands.add_parser("plot", help="PNGs of fitted responses and weights across budgets",
                            description="Draw each DDO mixture's fitted responses with their "
                            "observed points, and the weights across all budgets given.\n\n"
                            + _PLOT_EXAMPLE, formatter_class=formatter)
    p.add_argument("mixtures", nargs="+", help="mixture files (DDO and/or predicted)")
    p.add_argument("--out-dir", required=True, help="directory for the PNG files")
    p.set_defaults(handler=cmd_plot)


def cmd_plot(args) -> int:
    from ..method.plots import plot_mixtures

    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir}: exists and is not a directory")
    mixtures = [(path, load_mixture(path)) for path in args.mixtures]
    with writing(out_dir, "--out-dir"):
        written = plot_mixtures(mixtures, out_dir)
    for path in written:
        emit(f"wrote {path}")
    return 0
