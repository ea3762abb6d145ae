"""Fused cross-entropy over the vocabulary with per-domain loss sums, as Triton kernels.

The forward kernel runs one program per token row. It streams the row's logits in blocks of
``BLOCK_V`` columns, keeping a running maximum and a running sum of ``exp(logit - max)``
(rescaled whenever the maximum grows), so the log-sum-exp comes out of one pass without a
float32 softmax ever existing in memory. The token loss is ``lse - logit[label]``; the row
``atomic_add``s it, and a count of one, into the per-domain buffers. The backward kernel
re-reads the logits blockwise and writes ``(softmax - onehot) * grad_scale`` from the saved
per-row lse, in the logits' own dtype. Rows whose label is ``ignore_index`` add nothing and
get a zero gradient.

Importing this module never fails: without triton, using it raises an ImportError that says
how to install it. Set ``TRITON_INTERPRET=1`` before triton is first imported to run the
kernels on CPU tensors (slow; for tests).
"""

import logging
import os
from typing import Optional, Tuple

import torch

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError as error:  # the kernels are optional: the torch path covers every case
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR: Optional[ImportError] = error
else:
    _TRITON_IMPORT_ERROR = None

# 4096 fp32 values per block = 16 per thread at 8 warps: large enough to amortise the loop,
# small enough to stay in registers for any vocabulary.
MAX_BLOCK_V = 4096


def _interpreting() -> bool:
    """Whether triton runs kernels in its CPU interpreter (decided when triton was imported)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on tensors of ``device``, or None when they can."""
    if triton is None:
        return (f"triton is not importable ({_TRITON_IMPORT_ERROR}); install it with "
                "`pip install triton` or `pip install -e \".[gpu]\"`")
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreting():
        return None
    return (f"the Triton kernel needs CUDA tensors, got tensors on {device}; run on a GPU, or "
            "set TRITON_INTERPRET=1 before triton is first imported to interpret it on CPU")


def _require_triton() -> None:
    if triton is None:
        raise ImportError(unavailable_reason(torch.device("cpu")))


if triton is not None:

    @triton.jit
    def _forward_kernel(logits_ptr, stride_batch, stride_time, seq_len,
                        labels_ptr, domains_ptr, lse_ptr, row_loss_ptr,
                        loss_sum_ptr, count_ptr, vocab_size, num_domains, ignore_index,
                        BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        # rows are (sample, position) pairs so a strided [B, T, V] slice needs no copy
        row_base = logits_ptr + (row // seq_len) * stride_batch + (row % seq_len) * stride_time
        columns = tl.arange(0, BLOCK_V)
        # a finite start: a first block of all -inf logits (masked vocabulary) then rescales
        # by exp(-inf) = 0 instead of exp(-inf - -inf) = NaN
        running_max = -3.0e38
        running_sum = 0.0
        for start in range(0, vocab_size, BLOCK_V):
            in_vocab = start + columns < vocab_size
            block = tl.load(row_base + start + columns, mask=in_vocab,
                            other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(block, axis=0))
            # rescale what was summed under the old maximum
            running_sum = (running_sum * tl.exp(running_max - new_max)
                           + tl.sum(tl.exp(block - new_max), axis=0))
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        tl.store(lse_ptr + row, lse)

        label = tl.load(labels_ptr + row)
        counted = label != ignore_index
        # an out-of-vocabulary label is rejected before launch; never read outside the row
        safe_label = tl.where(counted & (label >= 0) & (label < vocab_size), label, 0)
        label_logit = tl.load(row_base + safe_label).to(tl.float32)
        loss = tl.where(counted, lse - label_logit, 0.0)
        tl.store(row_loss_ptr + row, loss)

        domain = tl.load(domains_ptr + row)
        tracked = counted & (domain >= 0) & (domain < num_domains)
        safe_domain = tl.where(tracked, domain, 0)
        tl.atomic_add(loss_sum_ptr + safe_domain, loss, mask=tracked, sem="relaxed")
        tl.atomic_add(count_ptr + safe_domain, 1, mask=tracked, sem="relaxed")

    @triton.jit
    def _backward_kernel(logits_ptr, stride_batch, stride_time, seq_len,
                         grad_ptr, labels_ptr, lse_ptr, scale_ptr, vocab_size, ignore_index,
                         BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_base = logits_ptr + (row // seq_len) * stride_batch + (row % seq_len) * stride_time
        grad_base = grad_ptr + row * vocab_size  # the gradient buffer is contiguous
        columns = tl.arange(0, BLOCK_V)
        label = tl.load(labels_ptr + row)
        counted = label != ignore_index
        lse = tl.load(lse_ptr + row)
        scale = tl.load(scale_ptr)  # d(loss)/d(token loss), read on device: no host sync
        for start in range(0, vocab_size, BLOCK_V):
            index = start + columns
            in_vocab = index < vocab_size
            block = tl.load(row_base + index, mask=in_vocab, other=0.0).to(tl.float32)
            probability = tl.exp(block - lse)
            onehot = tl.where(index == label, 1.0, 0.0)
            grad = tl.where(counted, (probability - onehot) * scale, 0.0)
            tl.store(grad_base + index, grad.to(grad_ptr.dtype.element_ty), mask=in_vocab)


def _launch_config(vocab_size: int, block_size_v: Optional[int]) -> Tuple[int, int]:
    """(BLOCK_V, num_warps) for a vocabulary; ``block_size_v`` overrides (a power of two)."""
    if block_size_v is None:
        block_size_v = min(MAX_BLOCK_V, triton.next_power_of_2(vocab_size))
    elif block_size_v < 16 or block_size_v & (block_size_v - 1):
        raise ValueError(f"block_size_v must be a power of two >= 16, got {block_size_v}")
    return block_size_v, (8 if block_size_v >= 2048 else 4)


def _as_rows(logits: torch.Tensor) -> Tuple[torch.Tensor, int, int, int]:
    """View [N, V] or [B, T, V] logits as rows: (logits, stride_batch, stride_time, seq_len)."""
    if logits.stride(-1) != 1:
        raise ValueError("the kernel needs logits contiguous along the vocabulary")
    if logits.dim() == 2:
        return logits, logits.stride(0), 0, 1
    return logits, logits.stride(0), logits.stride(1), logits.shape[1]


def fused_forward(logits: torch.Tensor, labels: torch.Tensor, domain_ids: torch.Tensor,
                  num_domains: int, ignore_index: int, block_size_v: Optional[int] = None):
    """Run the forward kernel. ``labels`` and ``domain_ids`` are int64, one per row.

    Returns (row_loss fp32 [N], lse fp32 [N], loss_sum_per_domain fp32 [D], counts int32 [D]).
    """
    _require_triton()
    logits, stride_batch, stride_time, seq_len = _as_rows(logits)
    num_rows, vocab_size = labels.numel(), logits.shape[-1]
    block_v, num_warps = _launch_config(vocab_size, block_size_v)
    device = logits.device
    lse = torch.empty(num_rows, dtype=torch.float32, device=device)
    row_loss = torch.empty(num_rows, dtype=torch.float32, device=device)
    loss_sum = torch.zeros(num_domains, dtype=torch.float32, device=device)
    counts = torch.zeros(num_domains, dtype=torch.int32, device=device)
    _forward_kernel[(num_rows,)](
        logits, stride_batch, stride_time, seq_len, labels, domain_ids, lse, row_loss,
        loss_sum, counts, vocab_size, num_domains, ignore_index,
        BLOCK_V=block_v, num_warps=num_warps)
    return row_loss, lse, loss_sum, counts


def fused_backward(logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                   scale: torch.Tensor, ignore_index: int,
                   block_size_v: Optional[int] = None) -> torch.Tensor:
    """Gradient of ``scale * sum(token losses)`` w.r.t. ``logits``, in the logits' dtype."""
    _require_triton()
    logits, stride_batch, stride_time, seq_len = _as_rows(logits)
    vocab_size = logits.shape[-1]
    block_v, num_warps = _launch_config(vocab_size, block_size_v)
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _backward_kernel[(labels.numel(),)](
        logits, stride_batch, stride_time, seq_len, grad, labels, lse, scale,
        vocab_size, ignore_index, BLOCK_V=block_v, num_warps=num_warps)
    return grad


class FusedDomainCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy (differentiable) plus detached per-domain sums and token counts."""

    @staticmethod
    def forward(ctx, logits, labels, domain_ids, num_domains, ignore_index, block_size_v):
        row_loss, lse, loss_sum, counts = fused_forward(
            logits, labels, domain_ids, num_domains, ignore_index, block_size_v)
        num_tokens = (labels != ignore_index).sum()
        # torch sums the per-row losses so the mean is deterministic (atomics are not)
        loss = row_loss.sum() / num_tokens.clamp(min=1)
        ctx.save_for_backward(logits, labels, lse, num_tokens)
        ctx.ignore_index = ignore_index
        ctx.block_size_v = block_size_v
        ctx.mark_non_differentiable(loss_sum, counts)
        return loss, loss_sum, counts

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_loss_sum, _grad_counts):
        logits, labels, lse, num_tokens = ctx.saved_tensors
        scale = (grad_loss.float() / num_tokens.clamp(min=1)).reshape(1)
        grad = fused_backward(logits, labels, lse, scale, ctx.ignore_index, ctx.block_size_v)
        return grad, None, None, None, None, None


def fused_domain_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                               domain_ids: torch.Tensor, num_domains: int,
                               ignore_index: int = -100, block_size_v: Optional[int] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, loss_sum_per_domain fp32, tokens_per_domain int64) via the kernels.

    ``logits`` is [N, V] or [B, T, V] (any strides, vocabulary contiguous); ``labels`` and
    ``domain_ids`` hold one int64 per row (N or B*T), flattened in row order.
    """
    loss, loss_sum, counts = FusedDomainCrossEntropy.apply(
        logits, labels, domain_ids, num_domains, ignore_index, block_size_v)
    return loss, loss_sum, counts.to(torch.int64)
