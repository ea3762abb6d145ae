"""Proxy models built from config (never downloaded): GPT-2-style causal LMs and
BERT-style masked LMs, in named sizes from one that trains on 2 CPU cores up to GPT-2
Large (774M parameters, the AutoScale paper's causal model)."""

import logging
from typing import Tuple

import torch

from .presets import FAMILIES, ModelShape

logger = logging.getLogger(__name__)


MLM_MASK_FRACTION = 0.15  # BERT's recipe: of the chosen tokens 80% [MASK], 10% random, 10% kept


def build_model(family: str, size: str, vocab_size: int, seq_len: int, dropout: float = 0.0):
    """A freshly initialised model; the caller seeds torch before calling."""
    shape = FAMILIES[family][size]
    if family == "gpt2":
        return _gpt2(shape, vocab_size, seq_len, dropout)
    return _bert(shape, vocab_size, seq_len, dropout)


def _gpt2(shape: ModelShape, vocab_size: int, seq_len: int, dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=shape.hidden_size,
                        n_layer=shape.num_layers, n_head=shape.num_heads, resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False,
                        # GPT-2's default 50256 lies outside our vocabularies; we never generate.
                        bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def _bert(shape: ModelShape, vocab_size: int, seq_len: int, dropout: float):
    from transformers import BertConfig, BertForMaskedLM

    # One extra id past the tokenizer's vocabulary serves as [MASK].
    config = BertConfig(vocab_size=vocab_size + 1, hidden_size=shape.hidden_size,
                        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
                        intermediate_size=4 * shape.hidden_size, max_position_embeddings=seq_len,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForMaskedLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def causal_batch(tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) from samples of seq_len + 1 tokens: labels are inputs shifted by one."""
    return tokens[:, :-1], tokens[:, 1:]


def masked_batch(tokens: torch.Tensor, sample_ids: torch.Tensor, vocab_size: int,
                 seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking, keyed by each sample's global index so a resumed run masks identically.

    ``vocab_size`` is the tokenizer's; id ``vocab_size`` is [MASK]. Unchosen positions get
    label -100 (ignored by the loss).
    """
    inputs = tokens[:, :-1].clone()
    labels = torch.full_like(inputs, -100)
    for row, sample_id in enumerate(sample_ids.tolist()):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(sample_id))
        _mask_row(inputs[row], labels[row], vocab_size, generator)
    return inputs, labels


def _mask_row(inputs: torch.Tensor, labels: torch.Tensor, vocab_size: int, generator) -> None:
    length = inputs.numel()
    chosen = torch.rand(length, generator=generator) < MLM_MASK_FRACTION
    if not chosen.any():
        chosen[torch.randint(length, (1,), generator=generator)] = True
    labels[chosen] = inputs[chosen]
    action = torch.rand(length, generator=generator)
    inputs[chosen & (action < 0.8)] = vocab_size
    randomise = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomise] = torch.randint(vocab_size, (int(randomise.sum()),), generator=generator,
                                      dtype=inputs.dtype)
