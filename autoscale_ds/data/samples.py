"""Fixed-length training samples of one domain, in a seeded order that ignores the mixture.

As in Megatron's GPT dataset, a domain's documents (each already ending with the
end-of-document token) are concatenated in a shuffled order and cut into samples of
``seq_len + 1`` tokens with a stride of ``seq_len`` (inputs and shifted labels share the
extra token). Both the document order and the order of samples are shuffled per epoch,
keyed by (seed, domain name, epoch) and nothing else: a domain's k-th sample is the same
whatever weight the domain gets, so proxy runs of one sweep differ only by their mixture.

When more samples are asked for than one pass gives, further epochs follow with fresh
shuffles; ``max_epochs`` turns an over-request into an error naming the domain.
"""

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

_EPOCH_CACHE_SIZE = 2  # a sequential reader touches at most two epochs at a boundary


def stable_hash(text: str) -> int:
    """A 63-bit hash that, unlike ``hash()``, is the same in every process and run."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def samples_per_epoch(num_tokens: int, seq_len: int) -> int:
    """Whole samples of ``seq_len`` inputs one pass over ``num_tokens`` tokens gives (a sample
    reads one token more, its last target)."""
    return max(int(num_tokens) - 1, 0) // int(seq_len)


@dataclass(frozen=True)
class EpochPlan:
    domain: str
    num_samples: int
    samples_per_epoch: int
    epochs: float
    """Passes over the domain's tokens the request needs (1.5 = one and a half)."""

    @property
    def repeats(self) -> bool:
        return self.epochs > 1.0


class DomainSamples:
    """The k-th training sample of one domain, for any k (epochs handled here)."""

    def __init__(self, store, seq_len: int, seed: int, name: str,
                 max_epochs: Optional[float] = None):
        if seq_len < 1:
            raise InputError(f"sequence length must be positive, got {seq_len}")
        self.name = name
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.max_epochs = max_epochs
        self._tokens = store.tokens_view()
        lengths = np.asarray(store.sequence_lengths, dtype=np.int64)
        self._doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._doc_lengths = lengths
        self._nonempty_docs = np.flatnonzero(lengths > 0)
        self.num_tokens = int(lengths.sum())
        self.samples_per_epoch = samples_per_epoch(self.num_tokens, self.seq_len)
        if self.samples_per_epoch == 0:
            raise InputError(f"domain {name!r} has {self.num_tokens:,} tokens, fewer than one "
                             f"sample of {self.seq_len + 1} tokens; add data or shorten seq_len")
        self._epochs: "OrderedDict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]]" = OrderedDict()

    def __len__(self) -> int:
        """Samples in one epoch (indexing beyond it starts the next epoch)."""
        return self.samples_per_epoch

    def plan(self, num_samples: int) -> EpochPlan:
        """How many epochs ``num_samples`` needs; raises if that exceeds ``max_epochs``."""
        epochs = num_samples / self.samples_per_epoch
        if self.max_epochs is not None and epochs > self.max_epochs:
            raise InputError(
                f"domain {self.name!r}: {num_samples:,} samples need "
                f"{num_samples * self.seq_len:,} tokens, but it has {self.num_tokens:,} tokens "
                f"({self.samples_per_epoch:,} samples of {self.seq_len} per epoch) and "
                f"max_epochs={self.max_epochs:g} allows {self._max_samples():,} samples; lower "
                "this domain's budget, add data, or raise max_epochs")
        if epochs > 1.0:
            logger.info("domain %r repeats its data: %.2f epochs for %d samples",
                        self.name, epochs, num_samples)
        return EpochPlan(self.name, int(num_samples), self.samples_per_epoch, epochs)

    def _max_samples(self) -> int:
        return int(self.max_epochs * self.samples_per_epoch)

    def __getitem__(self, index: int) -> np.ndarray:
        """Tokens of sample ``index``: ``seq_len + 1`` int64 values."""
        if index < 0:
            raise IndexError(f"negative sample index {index} for domain {self.name!r}")
        epoch, within = divmod(int(index), self.samples_per_epoch)
        if self.max_epochs is not None and index >= self._max_samples():
            self.plan(index + 1)  # raises with the full explanation
        doc_order, doc_ends, sample_order = self._epoch(epoch)
        start = int(sample_order[within]) * self.seq_len
        return self._gather(doc_order, doc_ends, start, self.seq_len + 1)

    def _gather(self, doc_order, doc_ends, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        slot = int(np.searchsorted(doc_ends, start, side="right"))
        filled = 0
        while filled < count:
            doc = doc_order[slot]
            doc_begin = doc_ends[slot] - self._doc_lengths[doc]
            offset = start + filled - doc_begin
            take = min(count - filled, int(self._doc_lengths[doc] - offset))
            first = self._doc_starts[doc] + offset
            out[filled:filled + take] = self._tokens[first:first + take]
            filled += take
            slot += 1
        return out

    def _epoch(self, epoch: int):
        cached = self._epochs.get(epoch)
        if cached is not None:
            self._epochs.move_to_end(epoch)
            return cached
        rng = np.random.default_rng([self.seed, stable_hash(self.name), epoch])
        doc_order = rng.permutation(self._nonempty_docs)
        doc_ends = np.cumsum(self._doc_lengths[doc_order])
        sample_order = rng.permutation(self.samples_per_epoch)
        self._epochs[epoch] = (doc_order, doc_ends, sample_order)
        if len(self._epochs) > _EPOCH_CACHE_SIZE:
            self._epochs.popitem(last=False)
        return doc_order, doc_ends, sample_order
