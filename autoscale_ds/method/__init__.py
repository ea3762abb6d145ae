"""The method: power-law fits, the DDO solve, AutoScale's prediction across budgets, and the
noise-aware layer over both (sensitivity, shrinkage, backtest).

Pure numpy/scipy: it never imports torch or deepspeed, so it runs on a laptop with numbers
from a cluster. ``steps`` is the one place the ``ddo`` and ``predict`` steps are assembled;
the CLI and the orchestrator both call it.
"""
