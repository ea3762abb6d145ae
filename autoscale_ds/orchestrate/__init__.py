"""Orchestration: plan proxy sweeps, run them (in-process, local workers, SLURM), store results, solve, predict, report."""
