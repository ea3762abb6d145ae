"""Tokenise a stream of documents with worker processes, keeping the input order.

Workers load their own tokenizer from a picklable spec. At most a few chunks per worker
are in flight, so a corpus larger than memory streams through (``Pool.imap`` would read
the whole input ahead).
"""

import itertools
import multiprocessing
from collections import deque
from typing import Iterable, Iterator, List

from .tokenizer import TokenizerSpec, load_tokenizer

DOCUMENTS_PER_CHUNK = 64
CHUNKS_IN_FLIGHT_PER_WORKER = 4

_worker_tokenizer = None


def _init_worker(spec: TokenizerSpec) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(spec)
    _worker_tokenizer.threads = 1  # the processes are the parallelism; no oversubscription


def _encode_chunk(texts: List[str]) -> List[List[int]]:
    return _worker_tokenizer.encode_batch(texts)


def _chunks(texts: Iterable[str], size: int) -> Iterator[List[str]]:
    iterator = iter(texts)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def encode_stream(texts: Iterable[str], spec: TokenizerSpec, workers: int = 1,
                  chunk_size: int = DOCUMENTS_PER_CHUNK) -> Iterator[List[int]]:
    """Token ids of each text, in input order."""
    if workers <= 1:
        tokenizer = load_tokenizer(spec)
        for chunk in _chunks(texts, chunk_size):
            yield from tokenizer.encode_batch(chunk)
        return
    # spawn, not fork: a forked copy of a process holding threads (tqdm, BLAS) can deadlock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        pending = deque()
        for chunk in _chunks(texts, chunk_size):
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
