"""Per-domain validation loss on one fixed held-out set that belongs to the data, not the run.

Each domain's validation store is concatenated in its own document order and cut into
windows of ``seq_len + 1`` tokens with a stride of ``seq_len``, so every held-out token is
predicted once. When the split holds more windows than the cap (``eval_tokens_per_domain``,
or ``eval_samples_per_domain``), a subset is drawn with ``eval_seed`` — a seed of its own,
never the training seed — so every run, arm and seed of a comparison sees the same tokens.
The set's fingerprint (SHA-256 of its token ids and domain ids) goes into every result row,
and results measured on different eval sets are never combined silently.

Each evaluation also reports the objective on two disjoint halves of the set (even and odd
windows of each domain): their difference is the eval set's own sampling error.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..data.indexed import open_domain_store
from ..errors import InputError
from .distributed import all_reduce_sum
from .models import causal_batch, masked_batch

EVAL_SAMPLE_ID_OFFSET = 10**12  # keeps eval masking seeds apart from training ones
DEFAULT_EVAL_SEED = 1234
DEFAULT_EVAL_TOKENS_PER_DOMAIN = 32768


@dataclass
class EvalSet:
    domains: List[str]
    tokens: torch.Tensor
    """[num_samples, seq_len + 1] int64."""
    domain_ids: torch.Tensor
    sample_ids: torch.Tensor
    half_ids: torch.Tensor
    """0 or 1 per sample: which disjoint half of its domain's windows it belongs to."""
    fingerprint: str
    tokens_per_domain: Dict[str, int]
    """Tokens predicted per domain (seq_len per window)."""

    def describe(self) -> dict:
        """The ``eval_set`` entry of a result row."""
        return {"fingerprint": self.fingerprint, "tokens": dict(self.tokens_per_domain)}


def build_eval_set(manifest, domains: List[str], seq_len: int, eval_seed: int,
                   max_tokens_per_domain: int, max_samples_per_domain: Optional[int] = None
                   ) -> EvalSet:
    """The fixed eval set: for each domain, its validation windows, capped and drawn by
    ``eval_seed`` (0 tokens = no cap: the whole validation split)."""
    rows, domain_ids, half_ids, counts = [], [], [], {}
    for index, domain in enumerate(domains):
        windows = _validation_windows(manifest, domain, seq_len)
        chosen = _capped(windows, seq_len, eval_seed, domain, max_tokens_per_domain,
                         max_samples_per_domain)
        rows.append(chosen)
        domain_ids += [index] * len(chosen)
        half_ids += [k % 2 for k in range(len(chosen))]
        counts[domain] = len(chosen) * seq_len
    tokens = torch.from_numpy(np.concatenate(rows)).long()
    domain_tensor = torch.tensor(domain_ids)
    return EvalSet(domains, tokens, domain_tensor, torch.arange(len(tokens)) + EVAL_SAMPLE_ID_OFFSET,
                   torch.tensor(half_ids), _fingerprint(domains, tokens, domain_tensor), counts)


def _validation_windows(manifest, domain: str, seq_len: int) -> np.ndarray:
    store = open_domain_store(manifest, domain, "valid")
    try:
        flat = np.asarray(store.tokens_view(), dtype=np.int64)
    finally:
        store.close()
    count = (len(flat) - 1) // seq_len
    if count < 2:
        raise InputError(f"domain {domain!r}: the validation store has {len(flat):,} tokens, "
                         f"fewer than two eval windows of {seq_len + 1}; hold out more text "
                         "(`autoscale prepare --valid-fraction`) or shorten seq_len")
    starts = np.arange(count) * seq_len
    return flat[starts[:, None] + np.arange(seq_len + 1)]


def _capped(windows: np.ndarray, seq_len: int, eval_seed: int, domain: str,
            max_tokens: int, max_samples: Optional[int]) -> np.ndarray:
    limit = len(windows)
    if max_tokens:
        limit = min(limit, max(2, max_tokens // seq_len))
    if max_samples:
        limit = min(limit, max(2, max_samples))
    if limit == len(windows):
        return windows
    from ..data.samples import stable_hash

    rng = np.random.default_rng([eval_seed, stable_hash(domain)])
    # Sorted, so the set reads in the split's own order whatever the draw.
    return windows[np.sort(rng.permutation(len(windows))[:limit])]


def _fingerprint(domains: List[str], tokens: torch.Tensor, domain_ids: torch.Tensor) -> str:
    digest = hashlib.sha256("\0".join(domains).encode())
    digest.update(tokens.numpy().astype("<i8").tobytes())
    digest.update(domain_ids.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


@torch.no_grad()
def evaluate(model, eval_set: EvalSet, batch_size: int, rank: int, world: int, family: str,
             vocab_size: int, seed: int, loss_fn) -> Dict[str, dict]:
    """{"loss": {domain: mean token loss}, "perplexity": {domain: exp(loss)},
    "perplexity_halves": [{domain: ppl on even windows}, {domain: ppl on odd windows}]}."""
    was_training = model.training
    model.eval()
    num_domains = len(eval_set.domains)
    device = next(model.parameters()).device
    # One bucket per (domain, half): the whole-set numbers are the sum of the two halves.
    sums = torch.zeros(2 * num_domains, dtype=torch.float64, device=device)
    counts = torch.zeros(2 * num_domains, dtype=torch.float64, device=device)
    mine = torch.arange(rank, len(eval_set.tokens), world)
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        result = _eval_batch(model, eval_set, rows, family, vocab_size, seed, loss_fn, device)
        sums += result.loss_sum_per_domain.to(sums)
        counts += result.tokens_per_domain.to(counts)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    model.train(was_training)
    return _eval_summary(eval_set.domains, sums.view(num_domains, 2).cpu(),
                         counts.view(num_domains, 2).cpu())


def _eval_summary(domains: List[str], sums: torch.Tensor, counts: torch.Tensor) -> Dict[str, dict]:
    losses = {d: float(sums[i].sum() / counts[i].sum()) for i, d in enumerate(domains)}
    halves = [{d: math.exp(float(sums[i, h] / counts[i, h])) for i, d in enumerate(domains)}
              for h in (0, 1)]
    return {"loss": losses, "perplexity": {d: math.exp(v) for d, v in losses.items()},
            "perplexity_halves": halves}


def _eval_batch(model, eval_set, rows, family, vocab_size, seed, loss_fn, device):
    tokens = eval_set.tokens[rows]
    if family == "bert":
        inputs, labels = masked_batch(tokens, eval_set.sample_ids[rows], vocab_size, seed)
    else:
        inputs, labels = causal_batch(tokens)
    logits = model(input_ids=inputs.to(device)).logits
    buckets = 2 * eval_set.domain_ids[rows] + eval_set.half_ids[rows]
    return loss_fn(logits, labels.to(device), buckets.to(device), 2 * len(eval_set.domains))
