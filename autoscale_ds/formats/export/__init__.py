"""Turn a mixture ``{domain: weight}`` into the data-blend config of a training framework.

A mixture names domains; frameworks want file prefixes or folders with weights. The
paths map (``DataPaths``) bridges the two: per domain and split, an ordered list of
``(path, share)`` whose shares sum to 1, so each path gets ``domain weight * share``.
``parse_export`` inverts every exporter so a config can be checked against a mixture.
The writers live in :mod:`.writers`, the readers in :mod:`.readers`; this module holds the
registry of formats and the two entry points.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, NamedTuple

from autoscale_ds.formats.datapaths import (Blend, DataPaths, _is_number, data_paths_from_mapping,
                                            load_data_paths, with_manifest_stats)
from autoscale_ds.errors import InputError

log = logging.getLogger(__name__)

from autoscale_ds.formats.export.readers import (_known, _parse_gpt_neox, _parse_hf, _parse_litdata,
                                                 _parse_megatron, _parse_megatron_deepspeed,
                                                 _parse_megatron_per_split, _parse_mosaicml,
                                                 _parse_nanotron, _parse_olmo_core)
from autoscale_ds.formats.export.writers import (Options, _check_weights, _export_gpt_neox,
                                                 _export_hf, _export_litdata, _export_megatron,
                                                 _export_megatron_data_args,
                                                 _export_megatron_deepspeed,
                                                 _export_megatron_per_split, _export_mosaicml,
                                                 _export_nanotron, _export_olmo_core)

__all__ = ["DEPRECATED_FORMATS", "FORMATS", "DataPaths", "data_paths_from_mapping",
           "epoch_cap", "export_mixture", "load_data_paths", "parse_export", "with_manifest_stats"]



class Format(NamedTuple):
    """How to write a mixture in one framework's terms, and how to read it back."""

    export: Callable[[Mapping[str, float], DataPaths, Options], str]
    parse: Callable[[str, DataPaths], dict[str, Blend]]
    reads_megatron_prefixes: bool = False


FORMATS: dict[str, Format] = {
    "megatron": Format(_export_megatron, _parse_megatron, True),
    "megatron-data-args": Format(_export_megatron_data_args, _parse_megatron, True),
    "megatron-per-split": Format(_export_megatron_per_split, _parse_megatron_per_split, True),
    "megatron-deepspeed": Format(_export_megatron_deepspeed, _parse_megatron_deepspeed, True),
    "gpt-neox": Format(_export_gpt_neox, _parse_gpt_neox, True),
    "hf": Format(_export_hf, _parse_hf),
    "mosaicml": Format(_export_mosaicml, _parse_mosaicml),
    "litdata": Format(_export_litdata, _parse_litdata),
    "nanotron": Format(_export_nanotron, _parse_nanotron),
    "olmo-core": Format(_export_olmo_core, _parse_olmo_core),
}
# Old name -> new name. Kept in FORMATS so that `--format litgpt` (choices=sorted(FORMATS))
# still works for existing users; exporting or parsing under it warns.
DEPRECATED_FORMATS = {"litgpt": "litdata"}
FORMATS.update({old: FORMATS[new] for old, new in DEPRECATED_FORMATS.items()})


def _format(fmt: str) -> tuple[str, Format]:
    if fmt in DEPRECATED_FORMATS:
        log.warning("export format %r is deprecated: it targets litdata's CombinedStreamingDataset; "
                    "use --format %s", fmt, DEPRECATED_FORMATS[fmt])
        fmt = DEPRECATED_FORMATS[fmt]
    if fmt not in FORMATS:
        known = [f for f in FORMATS if f not in DEPRECATED_FORMATS]
        raise InputError(f"unknown export format {fmt!r}; known formats: {', '.join(known)}")
    return fmt, FORMATS[fmt]


def _warn_megatron_prefixes(fmt: str, exporter: Format, paths: DataPaths) -> None:
    # Warn, not refuse: the weights are right, and the pipeline's default export list has hf.
    if paths.megatron_prefixes and not exporter.reads_megatron_prefixes:
        log.warning("%s cannot read Megatron indexed stores (PREFIX.bin/.idx), and the paths of %s "
                    "are such prefixes: the weights are right, but give --data-paths a map of this "
                    "framework's own copies of the domains for a config it can load", fmt, paths.source)


def _number_at(obj: Any, *keys: str) -> float | None:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return float(obj) if _is_number(obj) and math.isfinite(obj) and obj > 0 else None


def epoch_cap(mixture: Any, paths: DataPaths) -> tuple[dict[str, float], str]:
    """Per domain, the passes over its train data ``mixture`` (a formats.Mixture) allows, and
    where that comes from; ``({}, "")`` when the mixture carries no cap.

    A ``max_epochs`` in the provenance (top level or under ``guards``) caps every domain. A
    predicted mixture's ``guards.ceiling`` (a weight share, "*" for the rest, as the pipeline's
    ``max_epochs`` sets it) caps a domain at ``ceiling * total_tokens / train tokens`` passes,
    given the train tokens from a domains manifest."""
    provenance = getattr(mixture, "provenance", None)
    if not isinstance(provenance, Mapping):
        return {}, ""
    max_epochs = _number_at(provenance, "max_epochs") or _number_at(provenance, "guards", "max_epochs")
    if max_epochs is not None:
        return {d: max_epochs for d in paths.domains}, f"max_epochs {max_epochs:g} from the mixture's provenance"
    guards = provenance.get("guards")
    ceiling = guards.get("ceiling") if isinstance(guards, Mapping) else None
    if not isinstance(ceiling, Mapping) or not ceiling:
        return {}, ""
    caps = {}
    for domain in paths.domains:
        share = _number_at(ceiling, domain) or _number_at(ceiling, "*")
        stats = paths.train_stats.get(domain)
        if share is None or share >= 1.0:
            continue
        if stats is None:
            log.warning("olmo-core: domain %r has a weight ceiling %g but its train tokens are unknown "
                        "(no domains manifest), so its repetition is not capped from it", domain, share)
            continue
        caps[domain] = share * float(mixture.total_tokens) / stats.tokens
    return caps, ("the predicted mixture's weight ceilings (guards.ceiling) x total_tokens / the "
                  f"domain's train tokens in {paths.source}") if caps else ""


def export_mixture(weights: Any, paths: DataPaths, fmt: str, *, seed: int = 0) -> str:
    """Render a mixture as ``fmt`` through the paths map. ``weights`` is ``{domain: weight}``
    (summing to 1) or a formats.Mixture, whose provenance also gives olmo-core its epoch cap.
    ``seed`` is written where the target samples with one (hf, litdata)."""
    name, exporter = _format(fmt)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"export seed must be an integer >= 0, got {seed!r}")
    _warn_megatron_prefixes(name, exporter, paths)
    mixture = weights if hasattr(weights, "weights") and hasattr(weights, "provenance") else None
    cap, cap_source = epoch_cap(mixture, paths) if mixture is not None else ({}, "")
    options = Options(seed=seed, epoch_cap=cap, epoch_cap_source=cap_source,
                      total_tokens=float(mixture.total_tokens) if mixture is not None else None)
    checked = _check_weights(mixture.weights if mixture is not None else weights, paths)
    return exporter.export(checked, paths, options)


def parse_export(text: str, fmt: str, paths: DataPaths) -> dict[str, float]:
    """Read an export back as normalised {domain: weight} over every domain of ``paths``
    (0.0 where absent), so an existing framework config can be checked against a mixture."""
    fmt, exporter = _format(fmt)
    blends = exporter.parse(text, paths)
    for blend in blends.values():  # eval splits too: a stray path there is a bug as well
        _known([path for path, _ in blend], paths, fmt)
    owner, sums = paths.domain_of_path(), {d: 0.0 for d in paths.domains}
    for path, weight in blends["train"]:
        sums[owner[path]] += weight
    total = math.fsum(sums.values())
    if total <= 0:
        raise InputError(f"{fmt} export: all train weights are 0")
    return {d: s / total for d, s in sums.items()}
