"""Shared fixtures: a real multi-domain corpus, tokenised once per test session."""

import importlib.util
import sys
from pathlib import Path

import pytest

from autoscale_ds.data.stdlib_corpus import build_stdlib_corpus
from autoscale_ds.data.prepare import PrepareConfig, prepare

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
# The bench scripts import their helpers (``curves``) from bench/, as `python bench/X.py` does.
sys.path.insert(0, str(BENCH_DIR))

CORPUS_DOMAINS = ["code", "docstrings", "comments", "reference"]


@pytest.fixture(scope="session")
def raw_corpus(tmp_path_factory):
    """Four domains of real text cut from this Python's standard library (JSONL specs)."""
    out = tmp_path_factory.mktemp("raw_corpus")
    return build_stdlib_corpus(out, max_chars_per_domain=120_000, domains=CORPUS_DOMAINS)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, raw_corpus):
    """The raw corpus tokenised with a locally trained 1000-piece SentencePiece model."""
    out = tmp_path_factory.mktemp("prepared")
    return prepare(PrepareConfig(out_dir=str(out), domains=raw_corpus, train_vocab_size=1000,
                                 valid_fraction=0.1, seed=0, progress=False))


def load_bench_module(name: str):
    """A script of bench/ (not a package) imported as a module, e.g. ``load_bench_module("quality")``."""
    path = BENCH_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
