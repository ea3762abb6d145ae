"""Mean cross-entropy for backprop plus per-domain loss sums and token counts, in one pass.

Every training sample carries a domain id. ``per_domain_cross_entropy`` returns the usual
mean loss over non-ignored tokens (what training backprops) together with, per domain, the
sum of token losses (nats) and the number of tokens, detached, so per-domain loss and
perplexity cost no second cross-entropy. ``reduce_across_ranks`` sums the per-domain vectors
over data-parallel ranks and ``DomainLossTracker`` accumulates them across steps (and
checkpoints, through its state dict).

Two backends compute the same numbers: "torch" (per-token ``F.cross_entropy`` in float32,
then ``scatter_add_``) and "triton" (fused kernels in ``domain_loss_triton`` that never
build a float32 copy of the logits). "auto" picks the kernel for CUDA tensors when triton
imports. Labels must already be shifted to line up with the logits.
"""

import importlib.util
import logging
import math
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")


class DomainLoss(NamedTuple):
    loss: torch.Tensor
    """Scalar mean loss over non-ignored tokens (differentiable; 0 when there are none)."""
    loss_sum_per_domain: torch.Tensor
    """float32 [num_domains]: summed token losses in nats, detached."""
    tokens_per_domain: torch.Tensor
    """int64 [num_domains]: non-ignored tokens counted per domain, detached."""


def per_domain_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                             domain_ids: torch.Tensor, num_domains: int,
                             ignore_index: int = -100, backend: str = "auto", *,
                             check_values: bool = True) -> DomainLoss:
    """Mean cross-entropy and its per-domain sums/counts from one cross-entropy computation.

    ``logits`` is [B, T, V] with ``labels`` [B, T], or [N, V] with ``labels`` [N].
    ``domain_ids`` is per sample ([B], with 3-D logits) or per token (the labels' shape).
    ``check_values`` verifies that domain ids lie in [0, num_domains) and labels in [0, V)
    or equal ``ignore_index``; on CUDA that costs one host sync per call, so a trusted
    pipeline may turn it off (unchecked out-of-range domain ids are then left out of the
    per-domain tallies, never written out of bounds).
    """
    labels_flat, domains_flat = _flat_inputs(logits, labels, domain_ids, num_domains)
    if check_values:
        _check_values(labels_flat, domains_flat, logits.shape[-1], num_domains, ignore_index)
    chosen = _resolve_backend(backend, logits.device)
    if chosen == "triton" and labels_flat.numel() > 0:
        from .domain_loss_triton import fused_domain_cross_entropy
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        return DomainLoss(*fused_domain_cross_entropy(
            logits, labels_flat, domains_flat, num_domains, ignore_index))
    return _reference(logits, labels_flat, domains_flat, num_domains, ignore_index)


def _reference(logits: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor,
               num_domains: int, ignore_index: int) -> DomainLoss:
    """The plain torch path: one per-token cross-entropy feeds the mean and the tallies."""
    token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels,
                                 reduction="none", ignore_index=ignore_index)
    counted = labels != ignore_index
    num_tokens = counted.sum()
    loss = token_loss.sum() / num_tokens.clamp(min=1)
    # unchecked out-of-range ids are dropped from the tallies, as the kernel does
    tracked = counted & (domain_ids >= 0) & (domain_ids < num_domains)
    index = torch.where(tracked, domain_ids, torch.zeros_like(domain_ids))
    loss_sum = torch.zeros(num_domains, dtype=torch.float32, device=logits.device)
    loss_sum.scatter_add_(0, index, torch.where(tracked, token_loss.detach(), 0.0))
    tokens = torch.zeros(num_domains, dtype=torch.int64, device=logits.device)
    tokens.scatter_add_(0, index, tracked.to(torch.int64))
    return DomainLoss(loss, loss_sum, tokens)


def _flat_inputs(logits: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor,
                 num_domains: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and dtypes; return int64 labels and per-token domain ids, flattened."""
    if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
    if logits.dim() not in (2, 3) or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor [B, T, V] or [N, V], got "
                         f"{logits.dtype} {tuple(logits.shape)}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal the logits shape "
                         f"without the vocabulary, {tuple(logits.shape[:-1])}")
    for name, tensor in (("labels", labels), ("domain_ids", domain_ids)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {tensor.dtype}")
        if tensor.device != logits.device:
            raise ValueError(f"{name} is on {tensor.device} but logits are on "
                             f"{logits.device}; move them to one device")
    per_sample = logits.dim() == 3 and tuple(domain_ids.shape) == (logits.shape[0],)
    if per_sample:
        domain_ids = domain_ids[:, None].expand(labels.shape)
    elif tuple(domain_ids.shape) != tuple(labels.shape):
        expected = f"[{logits.shape[0]}] (per sample) or " if logits.dim() == 3 else ""
        raise ValueError(f"domain_ids shape {tuple(domain_ids.shape)} must be {expected}"
                         f"{list(labels.shape)} (per token)")
    # the kernel indexes both by row: they must be contiguous int64
    return labels.reshape(-1).long().contiguous(), domain_ids.reshape(-1).long().contiguous()


def _check_values(labels: torch.Tensor, domain_ids: torch.Tensor, vocab_size: int,
                  num_domains: int, ignore_index: int) -> None:
    bad_domain = (domain_ids < 0) | (domain_ids >= num_domains)
    bad_label = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    num_bad_domain, num_bad_label = torch.stack([bad_domain.sum(), bad_label.sum()]).tolist()
    if num_bad_domain:
        example = int(domain_ids[bad_domain][0])
        raise ValueError(f"{num_bad_domain} token(s) have a domain id outside "
                         f"[0, {num_domains}), e.g. {example}; raise num_domains or fix the "
                         "sample's domain id")
    if num_bad_label:
        example = int(labels[bad_label][0])
        raise ValueError(f"{num_bad_label} label(s) are outside [0, {vocab_size}) and not "
                         f"ignore_index={ignore_index}, e.g. {example}; check the tokenizer's "
                         "vocabulary size and the padding label")


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"  # auto never imports triton for CPU tensors
    reason = triton_unavailable_reason(device)
    if reason is None:
        return "triton"
    if backend == "triton":
        raise RuntimeError(f"backend='triton' cannot run: {reason}. Use backend='torch' or "
                           "'auto'.")
    logger.debug("fused cross-entropy unavailable, using torch: %s", reason)
    return "torch"


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the fused kernel cannot run on ``device`` (None when it can); never raises."""
    try:
        from .domain_loss_triton import unavailable_reason
        return unavailable_reason(device)
    except Exception as error:  # a broken triton install must not break training
        return f"importing the kernel module failed: {error!r}"


def apex_available() -> bool:
    """Whether NVIDIA apex's fused cross-entropy or normalization is importable; never raises."""
    for module in ("apex.contrib.xentropy", "apex.normalization"):
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except Exception as error:  # find_spec imports the parents; broken installs raise
            logger.debug("apex probe %s failed: %r", module, error)
    return False


def reduce_across_ranks(domain_loss: DomainLoss, group=None) -> DomainLoss:
    """Sum the per-domain sums and counts over all ranks; a no-op without torch.distributed.

    ``loss`` stays this rank's mean (data parallelism already averages its gradients). Both
    vectors travel in one float64 all-reduce: one collective, counts exact to 2**53.
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return domain_loss
    num_domains = domain_loss.loss_sum_per_domain.numel()
    packed = torch.cat([domain_loss.loss_sum_per_domain.detach().to(torch.float64),
                        domain_loss.tokens_per_domain.detach().to(torch.float64)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return domain_loss._replace(
        loss_sum_per_domain=packed[:num_domains].to(torch.float32),
        tokens_per_domain=packed[num_domains:].round().to(torch.int64))


class DomainLossTracker:
    """Running per-domain loss sums and token counts across steps (and resumed runs).

    ``update`` only adds on the tensors' device (no host sync); reading the averages syncs.
    """

    def __init__(self, num_domains: int):
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be a positive int, got {num_domains!r}")
        self.num_domains = num_domains
        self.reset()

    def reset(self) -> None:
        self._loss_sum_nats = torch.zeros(self.num_domains, dtype=torch.float64)
        self._tokens = torch.zeros(self.num_domains, dtype=torch.int64)

    def update(self, domain_loss: DomainLoss) -> None:
        loss_sum = domain_loss.loss_sum_per_domain.detach()
        tokens = domain_loss.tokens_per_domain.detach()
        if loss_sum.shape != (self.num_domains,) or tokens.shape != (self.num_domains,):
            raise ValueError(f"tracker has {self.num_domains} domains but got per-domain "
                             f"vectors of shapes {tuple(loss_sum.shape)} and "
                             f"{tuple(tokens.shape)}; use the same num_domains")
        if self._tokens.device != tokens.device:  # follow the training device
            self._loss_sum_nats = self._loss_sum_nats.to(tokens.device)
            self._tokens = self._tokens.to(tokens.device)
        self._loss_sum_nats += loss_sum.to(torch.float64)
        self._tokens += tokens.to(torch.int64)

    def tokens_per_domain(self) -> Dict[int, int]:
        return {index: int(count) for index, count in enumerate(self._tokens.tolist())}

    def mean_loss_per_domain(self) -> Dict[int, Optional[float]]:
        """Mean token loss (nats) per domain index; None for a domain without tokens."""
        sums, counts = self._loss_sum_nats.tolist(), self._tokens.tolist()
        return {index: (total / count if count > 0 else None)
                for index, (total, count) in enumerate(zip(sums, counts))}

    def perplexity_per_domain(self) -> Dict[int, Optional[float]]:
        """exp(mean loss) per domain index; None without tokens, inf past float range."""
        return {index: (None if mean is None else _safe_exp(mean))
                for index, mean in self.mean_loss_per_domain().items()}

    def state_dict(self) -> dict:
        """Plain Python numbers (JSON- and torch.save-friendly)."""
        return {"num_domains": self.num_domains,
                "loss_sum_per_domain": self._loss_sum_nats.tolist(),
                "tokens_per_domain": self._tokens.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_domains") != self.num_domains:
            raise ValueError(f"checkpoint tracker has {state.get('num_domains')} domains, this "
                             f"run has {self.num_domains}; resume with the same domain list")
        loss_sum = torch.as_tensor(state["loss_sum_per_domain"], dtype=torch.float64)
        tokens = torch.as_tensor(state["tokens_per_domain"], dtype=torch.int64)
        if loss_sum.shape != (self.num_domains,) or tokens.shape != (self.num_domains,):
            raise ValueError("checkpoint tracker vectors do not have one entry per domain")
        device = self._tokens.device
        self._loss_sum_nats, self._tokens = loss_sum.to(device), tokens.to(device)


def _safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf
