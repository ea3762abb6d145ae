"""Named proxy model sizes (pure: the run config is checked without importing torch)."""

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    hidden_size: int
    num_heads: int


# GPT-2 sizes from Radford et al. 2019 (small/medium/large); tiny/mini are ours for CPU proxies.
GPT2_SIZES: Dict[str, ModelShape] = {
    "tiny": ModelShape(2, 128, 4),
    "mini": ModelShape(4, 256, 4),
    "small": ModelShape(12, 768, 12),
    "medium": ModelShape(24, 1024, 16),
    "large": ModelShape(36, 1280, 20),
}
# BERT sizes: base from Devlin et al. 2019; tiny/mini/small as in Turc et al. 2019.
BERT_SIZES: Dict[str, ModelShape] = {
    "tiny": ModelShape(2, 128, 2),
    "mini": ModelShape(4, 256, 4),
    "small": ModelShape(4, 512, 8),
    "base": ModelShape(12, 768, 12),
}
FAMILIES = {"gpt2": GPT2_SIZES, "bert": BERT_SIZES}


def check_model_choice(family: str, size: str) -> Optional[str]:
    """Problem with the (family, size) choice, or None."""
    if not isinstance(family, str) or family not in FAMILIES:
        return f"model family must be one of {sorted(FAMILIES)}, got {family!r}"
    if not isinstance(size, str) or size not in FAMILIES[family]:
        return f"{family} size must be one of {list(FAMILIES[family])}, got {size!r}"
    return None
