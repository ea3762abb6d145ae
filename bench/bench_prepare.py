"""Tokenisation throughput of `autoscale prepare` against a plain single-process loop.

Both tokenise the same built-in corpus with the same SentencePiece model, measured in one
run. The plain loop encodes one document at a time and keeps the ids in a Python list, as a
quick script would; `prepare` encodes in batches with worker processes and streams into
Megatron-format stores. Prints tokens/s of each and their ratio; asserts nothing.

    python bench/bench_prepare.py --chars 4M --workers 2
"""

import argparse
import logging
import tempfile
import time
from pathlib import Path

from autoscale_ds.console import parse_token_count
from autoscale_ds.data.stdlib_corpus import build_stdlib_corpus
from autoscale_ds.data.prepare import PrepareConfig, prepare
from autoscale_ds.data.sources import iter_documents, resolve
from autoscale_ds.data.tokenizer import load_tokenizer, spec_for_path


def plain_loop(specs, model_path: Path) -> int:
    tokenizer = load_tokenizer(spec_for_path(str(model_path)))
    all_ids = []
    for spec in specs:
        for text in iter_documents(resolve(spec)):
            all_ids.append(tokenizer._model.encode(text) + [tokenizer.eod_id])
    return sum(len(ids) for ids in all_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=parse_token_count, default=4e6, help="characters per domain")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        specs = build_stdlib_corpus(Path(tmp) / "raw", int(args.chars))
        # Train the tokenizer once, outside both timings.
        first = prepare(PrepareConfig(out_dir=f"{tmp}/warm", domains=specs[:1], progress=False,
                                      train_vocab_size=args.vocab))
        model = first.root / first.tokenizer["path"]
        start = time.perf_counter()
        plain_tokens = plain_loop(specs, model)
        plain_s = time.perf_counter() - start
        print(f"corpus: {len(specs)} domains, {plain_tokens:,} tokens")
        print(f"{'plain single-process loop':<34} {plain_tokens / plain_s:>12,.0f} tokens/s "
              f"({plain_s:.2f} s)")
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            manifest = prepare(PrepareConfig(out_dir=f"{tmp}/out{workers}", domains=specs,
                                             tokenizer=str(model), workers=workers, progress=False))
            ours_s = time.perf_counter() - start
            ours_tokens = sum(e.train.tokens + e.valid.tokens for e in manifest.domains.values())
            label = f"autoscale prepare, {workers} worker(s)"
            print(f"{label:<34} {ours_tokens / ours_s:>12,.0f} tokens/s ({ours_s:.2f} s, "
                  f"ratio {(ours_tokens / ours_s) / (plain_tokens / plain_s):.2f}x, stores written)")


if __name__ == "__main__":
    main()
