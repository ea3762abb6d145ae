"""The run's training stream: which sample every rank sees at every micro-step.

The blended stream (see :mod:`autoscale_ds.data.blend`) fixes, for each global position,
the domain and that domain's running sample number; optimizer step ``s`` consumes positions
``[s*G, (s+1)*G)`` (G = global batch). Within a step, micro-batch ``a`` of rank ``r`` takes
``m`` consecutive positions at ``s*G + (a*W + r)*m`` (m = micro batch, W = world size), so
the ranks partition every step and a resumed run continues at the same position. That rule
lives in :mod:`autoscale_ds.data.layout`, shared with the public ``BlendSampler``: a user's
DataLoader over it yields these same micro-batches.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.blend import blend_indices
from ..data.layout import micro_batch_positions
from ..errors import InputError
from .plan import BatchTriple, SamplePlan


class TrainStream:
    def __init__(self, sources: Sequence, plan: SamplePlan, triple: BatchTriple, rank: int,
                 weights: Optional[Sequence[float]] = None):
        """``weights``: the blend's, when not the plan's own. A WSD branch reads its parent's
        stream: with the same weights, a blend of any length is a prefix of a longer one."""
        self.sources = list(sources)
        self.plan = plan
        self.triple = triple
        self.rank = rank
        self.domain_index, self.domain_sample_index = blend_indices(
            plan.weights if weights is None else weights, plan.total_samples)

    def positions(self, step: int, accumulation_index: int) -> np.ndarray:
        """This rank's global positions for micro-batch ``accumulation_index`` of ``step``."""
        accumulation = self.triple.accumulation_steps
        if not 0 <= accumulation_index < accumulation:
            # an index past the last would silently read the next step's samples
            raise InputError(f"accumulation index {accumulation_index} outside "
                             f"[0, {accumulation}) accumulation steps")
        span = micro_batch_positions(step * accumulation + accumulation_index, self.rank,
                                     self.triple.micro_batch_size, self.triple.world_size)
        return np.arange(span.start, span.stop)

    def micro_batch(self, step: int, accumulation_index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [m, seq_len + 1], domain ids [m], global sample ids [m])."""
        positions = self.positions(step, accumulation_index)
        rows = [self.sources[self.domain_index[p]][int(self.domain_sample_index[p])] for p in positions]
        tokens = torch.from_numpy(np.stack(rows)).long()
        domains = torch.from_numpy(self.domain_index[positions].astype(np.int64))
        return tokens, domains, torch.from_numpy(positions.astype(np.int64))

    def tokens_consumed(self, steps: int) -> Dict[str, int]:
        """Tokens of each domain in the first ``steps`` optimizer steps (all ranks)."""
        consumed = self.domain_index[: steps * self.triple.global_batch_size]
        counts = np.bincount(consumed, minlength=len(self.plan.domains))
        return {d: int(counts[i]) * self.plan.seq_len for i, d in enumerate(self.plan.domains)}
