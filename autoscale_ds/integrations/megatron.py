"""megatron-core data blends from an autoscale mixture.

megatron-core's ``BlendedMegatronDatasetConfig`` takes ``blend = (prefixes, weights)`` (one
distribution cut up by ``split``) or ``blend_per_split = [train, valid, test]`` (each a blend
or None). :func:`blend_from_mixture` and :func:`blend_per_split_from_mixture` build them from
a mixture and a paths map with the same per-path weights as ``autoscale export --format
megatron`` / ``megatron-per-split`` (each path gets *domain weight x share*; zero-weight
domains are left out), and :func:`gpt_dataset_config` wraps them in a ``GPTDatasetConfig``
ready for ``BlendedMegatronDatasetBuilder``.

Only :func:`gpt_dataset_config` imports megatron-core, so the blend functions also run
where megatron is absent (the Megatron-LM / Megatron-DeepSpeed patches in ``patches/`` call
them before any dataset exists).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from autoscale_ds.formats.datapaths import SPLITS, Blend, DataPaths, load_data_paths
from autoscale_ds.errors import InputError
from autoscale_ds.formats.export.writers import _blend, _check_weights, _split_blends
from autoscale_ds.formats.schemas import Mixture, load_mixture

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SPLIT", "PER_SPLIT", "MegatronBlend", "blend_domains", "blend_from_mixture",
           "blend_per_split_from_mixture", "gpt_dataset_config"]

MegatronBlend = Tuple[List[str], List[float]]  # megatron-core's blend: (prefixes, weights)
MixtureLike = Union[Mixture, Mapping[str, float], str, os.PathLike]
PathsLike = Union[DataPaths, str, os.PathLike]

DEFAULT_SPLIT = "969,30,1"  # Megatron-LM's legacy default for --data-path without --split
PER_SPLIT = "per-split"  # gpt_dataset_config(split=PER_SPLIT): the map's own valid/test paths
INSTALL_HINT = "pip install 'autoscale-ds[megatron]'"
# Megatron's GPTDataset flags that its config asserts are set; these are its CLI defaults.
_GPT_DEFAULTS = {"reset_position_ids": False, "reset_attention_mask": False, "eod_mask_loss": False}
_SPLIT_RE = re.compile(r"\s*[0-9.]+\s*(,\s*[0-9.]+\s*){0,2}")


# ----------------------------------------------------------------------------- blends


def blend_from_mixture(mixture: MixtureLike, paths: PathsLike, split: str = "train", *,
                       check_files: bool = True) -> MegatronBlend:
    """megatron-core ``blend`` (prefixes, weights) of one split of the paths map.

    ``mixture`` is a :class:`Mixture`, a ``{domain: weight}`` mapping or a mixture file;
    ``paths`` a :class:`DataPaths` or a paths-map file. Train weights sum to 1; a valid or
    test blend covers only the domains that have such paths and is renormalised.
    """
    weights, data_paths = _inputs(mixture, paths)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not data_paths.has_split(split):
        raise InputError(f"data-paths file {data_paths.source} gives no {split!r} paths for any domain")
    blend = _blend(weights, data_paths, split)
    if not blend:
        raise InputError(f"every domain with {split!r} paths in {data_paths.source} has mixture "
                         f"weight 0, so the {split} blend would be empty")
    return _megatron_blend(blend, data_paths, check_files)


def blend_per_split_from_mixture(mixture: MixtureLike, paths: PathsLike, *,
                                 check_files: bool = True) -> List[Optional[MegatronBlend]]:
    """megatron-core ``blend_per_split``: [train, valid, test], None where the map has no such
    split (or only zero-weight domains have it), as Megatron-LM's own per-split reader gives."""
    weights, data_paths = _inputs(mixture, paths)
    blends = _split_blends(weights, data_paths, "megatron blend_per_split")
    return [_megatron_blend(blends[s], data_paths, check_files) if s in blends else None
            for s in SPLITS]


def blend_domains(prefixes: Sequence[str], paths: PathsLike) -> List[str]:
    """The domain of each prefix of a blend, in order: index i is the domain of the samples a
    megatron ``BlendedDataset`` tags with ``dataset_id == i``."""
    data_paths = _data_paths(paths)
    owner = data_paths.domain_of_path()
    missing = [p for p in prefixes if p not in owner]
    if missing:
        raise InputError(f"prefix {missing[0]!r} is not in data-paths file {data_paths.source}, "
                         "so its domain is unknown")
    return [owner[p] for p in prefixes]


def _inputs(mixture: MixtureLike, paths: PathsLike) -> Tuple[dict[str, float], DataPaths]:
    data_paths = _data_paths(paths)
    return _check_weights(_weights(mixture), data_paths), data_paths


def _weights(mixture: MixtureLike) -> Mapping[str, float]:
    if isinstance(mixture, Mixture):
        return mixture.weights
    if isinstance(mixture, (str, os.PathLike)):
        return load_mixture(mixture).weights
    return mixture  # a mapping; _check_weights validates it (and names what is wrong)


def _data_paths(paths: PathsLike) -> DataPaths:
    if isinstance(paths, DataPaths):
        return paths
    if isinstance(paths, (str, os.PathLike)):
        return load_data_paths(paths)
    raise InputError(f"paths must be a DataPaths or a paths-map file, got {type(paths).__name__}")


def _megatron_blend(blend: Blend, paths: DataPaths, check_files: bool) -> MegatronBlend:
    if check_files:
        _check_prefixes(blend, paths)
    return [p for p, _ in blend], [float(w) for _, w in blend]


def _check_prefixes(blend: Blend, paths: DataPaths) -> None:
    """Fail here, naming the file and domain, rather than deep inside a Megatron build."""
    owner = paths.domain_of_path()
    for prefix, _ in blend:
        if "://" in prefix:  # s3:// or msc:// object storage: megatron-core fetches it itself
            log.debug("not checking remote prefix %s", prefix)
            continue
        missing = [f for f in (Path(prefix + ".bin"), Path(prefix + ".idx")) if not f.is_file()]
        if missing:
            raise InputError(f"domain {owner[prefix]!r} in data-paths file {paths.source}: prefix "
                             f"{prefix!r} has no {missing[0]}{_prefix_hint(prefix)}")


def _prefix_hint(prefix: str) -> str:
    stem, suffix = os.path.splitext(prefix)
    if suffix in (".bin", ".idx") and Path(stem + ".bin").is_file():
        return f"; a prefix names the files without the suffix: use {stem!r}"
    return "; a prefix is the path of a .bin/.idx pair without the suffix (see `autoscale prepare`)"


# ----------------------------------------------------------------------------- config


def gpt_dataset_config(mixture: MixtureLike, paths: PathsLike, *, sequence_length: int,
                       random_seed: int, tokenizer: Any, split: str = DEFAULT_SPLIT,
                       check_files: bool = True, **kwargs: Any) -> Any:
    """A megatron-core ``GPTDatasetConfig`` drawing from the mixture.

    ``split`` is a ratio string such as ``"969,30,1"`` (one train blend cut into
    train/valid/test by documents, like ``--data-path`` + ``--split``) or :data:`PER_SPLIT`
    (the map's own train/valid/test paths, like ``--per-split-data-args-path``). Other
    ``GPTDatasetConfig`` fields go in ``kwargs``; ``reset_position_ids``,
    ``reset_attention_mask`` and ``eod_mask_loss`` default to False as on Megatron's CLI.
    """
    config_cls = _gpt_dataset_config_class()
    _check_scalars(sequence_length, random_seed, tokenizer)
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    _check_kwargs(kwargs, fields)
    data = _data_fields(mixture, paths, split, check_files)
    defaults = {k: v for k, v in _GPT_DEFAULTS.items() if k in fields}  # older releases lack some
    try:
        return config_cls(random_seed=random_seed, sequence_length=sequence_length,
                          tokenizer=tokenizer, **data, **{**defaults, **kwargs})
    except (AssertionError, TypeError, ValueError) as exc:  # megatron checks with assert
        raise InputError(f"megatron-core rejected the GPTDatasetConfig: {exc or type(exc).__name__}") from exc


def _gpt_dataset_config_class() -> type:
    try:
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    except ImportError as exc:
        raise InputError(f"the Megatron integration needs megatron-core ({exc}); "
                         f"install it with: {INSTALL_HINT}") from exc
    return GPTDatasetConfig


def _check_scalars(sequence_length: Any, random_seed: Any, tokenizer: Any) -> None:
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
        raise InputError(f"sequence_length must be a positive integer, got {sequence_length!r}")
    if isinstance(random_seed, bool) or not isinstance(random_seed, int) or random_seed < 0:
        raise InputError(f"random_seed must be an integer >= 0, got {random_seed!r}")
    if tokenizer is None:
        raise InputError("tokenizer is required: GPTDatasetConfig reads its vocabulary size and "
                         "end-of-document id (e.g. megatron.core.tokenizers.MegatronTokenizer)")


def _check_kwargs(kwargs: Mapping[str, Any], fields: set[str]) -> None:
    ours = {"blend", "blend_per_split"} & set(kwargs)
    if ours:
        raise InputError(f"{sorted(ours)[0]!r} is set from the mixture; pass split=... "
                         f"(a ratio string or {PER_SPLIT!r}) instead")
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise InputError(f"GPTDatasetConfig has no field {unknown[0]!r}; "
                         f"its fields are: {', '.join(sorted(fields))}")


def _data_fields(mixture: MixtureLike, paths: PathsLike, split: str,
                 check_files: bool) -> dict[str, Any]:
    data_paths = _data_paths(paths)
    if split == PER_SPLIT:
        blends = blend_per_split_from_mixture(mixture, data_paths, check_files=check_files)
        for name, blend in zip(SPLITS, blends):
            if blend is None:
                log.info("no %s blend in %s: megatron builds no %s dataset", name, data_paths.source, name)
        return {"blend_per_split": blends}
    _check_split(split)
    if data_paths.has_split("valid") or data_paths.has_split("test"):
        log.warning("split=%r cuts the train paths into train/valid/test; the valid/test paths of %s "
                    "are unused (pass split=%r to use them)", split, data_paths.source, PER_SPLIT)
    return {"blend": blend_from_mixture(mixture, data_paths, check_files=check_files), "split": split}


def _check_split(split: Any) -> None:
    if not isinstance(split, str) or not _SPLIT_RE.fullmatch(split):
        raise InputError(f"split must be up to three comma-separated ratios such as "
                         f"{DEFAULT_SPLIT!r}, or {PER_SPLIT!r}; got {split!r}")
    try:
        ratios = [float(x) for x in split.split(",")]
    except ValueError:  # e.g. "1.2.3" passes the character check
        ratios = [math.nan]
    if not all(math.isfinite(r) for r in ratios) or math.fsum(ratios) <= 0:
        raise InputError(f"split {split!r}: ratios must be numbers with a positive sum")
