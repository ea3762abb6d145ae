"""Per-domain validation loss on a fixed held-out set.

Each domain's eval set is the first ``eval_samples_per_domain`` samples of its validation
store, cut and shuffled by the run's seed: the same samples at every evaluation and in every
run of a sweep with the same seed, so eval numbers are comparable across mixtures. Samples
are spread over data-parallel ranks and the per-domain sums reduced.
"""

import math
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from ..data.samples import DomainSamples
from ..errors import InputError
from .distributed import all_reduce_sum
from .models import causal_batch, masked_batch

EVAL_SAMPLE_ID_OFFSET = 10**12  # keeps eval masking seeds apart from training ones


@dataclass
class EvalSet:
    domains: List[str]
    tokens: torch.Tensor
    """[num_samples, seq_len + 1] int64."""
    domain_ids: torch.Tensor
    sample_ids: torch.Tensor


def build_eval_set(manifest, domains: List[str], seq_len: int, seed: int,
                   samples_per_domain: int) -> EvalSet:
    rows, ids = [], []
    for index, domain in enumerate(domains):
        samples = DomainSamples(manifest.open_store(domain, "valid"), seq_len, seed, domain)
        count = min(samples_per_domain, len(samples))
        if count < 1:
            raise InputError(f"domain {domain!r}: validation store has no full sample of "
                             f"{seq_len + 1} tokens; raise --valid-fraction in `autoscale prepare`")
        rows += [samples[k] for k in range(count)]
        ids += [index] * count
    tokens = torch.from_numpy(np.stack(rows)).long()
    return EvalSet(domains, tokens, torch.tensor(ids), torch.arange(len(rows)) + EVAL_SAMPLE_ID_OFFSET)


@torch.no_grad()
def evaluate(model, eval_set: EvalSet, batch_size: int, rank: int, world: int, family: str,
             vocab_size: int, seed: int, loss_fn) -> Dict[str, Dict[str, float]]:
    """{"loss": {domain: mean token loss}, "perplexity": {domain: exp(loss)}}."""
    was_training = model.training
    model.eval()
    num_domains = len(eval_set.domains)
    device = next(model.parameters()).device
    sums = torch.zeros(num_domains, dtype=torch.float64, device=device)
    counts = torch.zeros(num_domains, dtype=torch.float64, device=device)
    mine = torch.arange(rank, len(eval_set.tokens), world)
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        result = _eval_batch(model, eval_set, rows, family, vocab_size, seed, loss_fn, device)
        sums += result.loss_sum_per_domain.to(sums)
        counts += result.tokens_per_domain.to(counts)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    model.train(was_training)
    losses = {d: float(sums[i] / counts[i]) for i, d in enumerate(eval_set.domains)}
    return {"loss": losses, "perplexity": {d: math.exp(v) for d, v in losses.items()}}


def _eval_batch(model, eval_set, rows, family, vocab_size, seed, loss_fn, device):
    tokens = eval_set.tokens[rows]
    if family == "bert":
        inputs, labels = masked_batch(tokens, eval_set.sample_ids[rows], vocab_size, seed)
    else:
        inputs, labels = causal_batch(tokens)
    logits = model(input_ids=inputs.to(device)).logits
    return loss_fn(logits, labels.to(device), eval_set.domain_ids[rows].to(device), len(eval_set.domains))
