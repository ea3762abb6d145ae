"""Stopping the orchestrator cleanly: the executors, the SLURM executor and the pipeline
share this, so it sits below all of them."""

import signal
from contextlib import contextmanager


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a job scheduler stopping the orchestrator) raises KeyboardInterrupt like
    Ctrl-C, so that the same cleanup runs: queued jobs are cancelled, not left to train for
    nobody. Only the main thread can set handlers; elsewhere only Ctrl-C arrives."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:
        pass
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
