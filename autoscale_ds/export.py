"""Turn a mixture ``{domain: weight}`` into the data-blend config of a training framework.

A mixture names domains; frameworks want file prefixes or folders with weights. The
paths map (``DataPaths``) bridges the two: per domain and split, an ordered list of
``(path, share)`` whose shares sum to 1, so each path gets ``domain weight * share``.
``parse_export`` inverts every exporter so a config can be checked against a mixture.
Floats are written with ``repr`` so a weight read back is bit-for-bit the one written.
"""


from __future__ import annotations

import json
import logging
import math
import shlex
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import yaml

from autoscale_ds.datapaths import (SPLITS, Blend, DataPaths, _check_path, _is_number,
                                    data_paths_from_mapping, load_data_paths)
from autoscale_ds.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "DataPaths", "data_paths_from_mapping", "export_mixture",
           "load_data_paths", "parse_export"]


# ----------------------------------------------------------------------------- exporting


def _num(value: float) -> str:
    return repr(float(value))  # shortest string that reads back as the same double


def _check_weights(weights: Mapping[str, float], paths: DataPaths) -> dict[str, float]:
    """Validate a mixture against the map; return it as floats summing to 1, same order."""
    if not isinstance(weights, Mapping):
        raise InputError(f"the mixture must map domain -> weight, got {type(weights).__name__}")
    if not weights:
        raise InputError("the mixture has no domains")
    out: dict[str, float] = {}
    for domain, w in weights.items():
        if not _is_number(w) or not math.isfinite(w) or w < 0:
            raise InputError(f"mixture weight of domain {domain!r} must be a finite number >= 0, got {w!r}")
        if domain not in paths.by_domain:
            raise InputError(f"mixture domain {domain!r} has no entry in data-paths file {paths.source}; "
                             f"add it (the file has: {', '.join(paths.domains)})")
        out[domain] = float(w)
    extra = [d for d in paths.domains if d not in out]
    if extra:
        log.warning("data-paths file %s has domains the mixture lacks (not exported): %s",
                    paths.source, ", ".join(extra))
    total = math.fsum(out.values())
    if total <= 0:
        raise InputError("all mixture weights are 0; nothing to export")
    if abs(total - 1.0) > 1e-12:
        if abs(total - 1.0) > 1e-6:
            log.warning("mixture weights sum to %r, not 1; normalising", total)
        out = {d: w / total for d, w in out.items()}
    return out


def _blend(weights: Mapping[str, float], paths: DataPaths, split: str = "train") -> Blend:
    """Per-path weights for one split. Zero-weight domains are dropped: Megatron and
    others build a dataset per listed prefix and fail or waste work on a 0-sample one.
    Non-train splits cover only domains that have them, so they are renormalised."""
    blend = [(p, w * share) for d, w in weights.items() if w > 0 for p, share in paths.shards(d, split)]
    if split == "train" or not blend:
        return blend
    total = math.fsum(w for _, w in blend)
    return [(p, w / total) for p, w in blend]


def _split_blends(weights: Mapping[str, float], paths: DataPaths, fmt: str) -> dict[str, Blend]:
    """Blends of the splits the map has; an eval split left empty by zero weights is dropped."""
    out: dict[str, Blend] = {}
    for split in SPLITS:
        if paths.has_split(split):
            out[split] = _blend(weights, paths, split)
            if not out[split]:
                log.warning("%s: every domain with %s paths has weight 0; %s split not exported",
                            fmt, split, split)
                del out[split]
    return out


def _train_only(weights: Mapping[str, float], paths: DataPaths, fmt: str) -> Blend:
    if paths.has_split("valid") or paths.has_split("test"):
        log.warning("%s carries only the train split; valid/test paths of %s are not exported "
                    "(megatron-per-split, megatron-deepspeed and gpt-neox carry them)", fmt, paths.source)
    return _blend(weights, paths)


def _no_whitespace(blend: Blend, fmt: str) -> Blend:
    for path, _ in blend:
        if any(c.isspace() for c in path):
            raise InputError(f"{fmt}: path {path!r} contains whitespace, but Megatron splits on it")
    return blend


def _flat(blend: Blend) -> list[str]:
    return [tok for path, w in blend for tok in (_num(w), path)]


def _yaml(comment: str, obj: Any) -> str:
    body = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"# {comment}\n{body}"


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def _export_megatron(w: Mapping[str, float], p: DataPaths) -> str:
    # Megatron-LM --data-path (megatron.core.datasets.utils.get_blend_from_list).
    return " ".join(_flat(_no_whitespace(_train_only(w, p, "megatron"), "megatron"))) + "\n"


def _export_megatron_data_args(w: Mapping[str, float], p: DataPaths) -> str:
    # Megatron-LM --data-args-path: read as f.read().split(), so no comments are possible.
    blend = _no_whitespace(_train_only(w, p, "megatron-data-args"), "megatron-data-args")
    return "".join(f"{_num(weight)} {path}\n" for path, weight in blend)


def _export_megatron_per_split(w: Mapping[str, float], p: DataPaths) -> str:
    # Megatron-LM --per-split-data-args-path: all three keys are read; null means "no such
    # split" (get_blend_from_list(None) -> None), whereas an empty list crashes it.
    blends = _split_blends(w, p, "megatron-per-split")
    return _json({s: _flat(blends[s]) if s in blends else None for s in SPLITS})


def _export_megatron_deepspeed(w: Mapping[str, float], p: DataPaths) -> str:
    # Megatron-DeepSpeed --data-path (or --{train,valid,test}-data-path), nargs='*' pairs.
    blends = _split_blends(w, p, "megatron-deepspeed")
    if not (p.has_split("valid") or p.has_split("test")):  # one blend, cut up by --split
        return " ".join(["--data-path", *map(shlex.quote, _flat(blends["train"]))]) + "\n"
    parts = [tok for s, b in blends.items() for tok in (f"--{s}-data-path", *map(shlex.quote, _flat(b)))]
    return " ".join(parts) + "\n"


def _export_gpt_neox(w: Mapping[str, float], p: DataPaths) -> str:
    # GPT-NeoX neox_args train/valid/test-data-paths + -data-weights (all three required).
    blends = _split_blends(w, p, "gpt-neox")
    note = "GPT-NeoX data config (neox_args: {train,valid,test}-data-paths / -data-weights)"
    for split in ("valid", "test"):
        if split not in blends:
            log.warning("gpt-neox needs %s-data-paths; reusing the train paths for it", split)
            note += f"; {split} reuses the train paths (the paths map gives no {split} paths)"
            blends[split] = blends["train"]
    obj: dict[str, list] = {}
    for split in SPLITS:
        obj[f"{split}-data-paths"] = [path for path, _ in blends[split]]
        obj[f"{split}-data-weights"] = [weight for _, weight in blends[split]]
    return _yaml(note, obj)


def _export_hf(w: Mapping[str, float], p: DataPaths) -> str:
    # datasets.interleave_datasets(datasets, probabilities=..., stopping_strategy=...).
    blend = _train_only(w, p, "hf")
    total = math.fsum(weight for _, weight in blend)
    return _json({"datasets": [path for path, _ in blend],
                  "probabilities": [weight / total for _, weight in blend],
                  "stopping_strategy": "first_exhausted"})


def _export_mosaicml(w: Mapping[str, float], p: DataPaths) -> str:
    # MosaicML streaming.Stream(remote|local, proportion); llm-foundry dataset.streams.
    blend, owner = _train_only(w, p, "mosaicml"), p.domain_of_path()
    streams: dict[str, dict[str, Any]] = {}
    for domain in dict.fromkeys(owner[path] for path, _ in blend):
        shards = [(path, weight) for path, weight in blend if owner[path] == domain]
        for k, (path, weight) in enumerate(shards):
            name = domain if len(shards) == 1 else f"{domain}_{k}"
            while name in streams:  # stream names are keys: keep them unique
                name += "_"
            streams[name] = {"remote" if "://" in path else "local": path, "proportion": weight}
    return _yaml("MosaicML streaming StreamingDataset(streams=[Stream(**s) for s in streams.values()]); "
                 "llm-foundry: paste under train_loader.dataset", {"streams": streams})


def _export_litgpt(w: Mapping[str, float], p: DataPaths) -> str:
    # litdata.CombinedStreamingDataset(datasets=[StreamingDataset(input_dir=...)], weights=...).
    blend = _train_only(w, p, "litgpt")
    return _json({"datasets": [{"input_dir": path} for path, _ in blend],
                  "weights": [weight for _, weight in blend], "iterate_over_all": False})


def _export_nanotron(w: Mapping[str, float], p: DataPaths) -> str:
    # nanotron NanosetDatasetsArgs(dataset_folder=[...], dataset_weights=[...]); the older
    # {folder: weight} form is rejected by current nanotron's strict config loading.
    blend = _train_only(w, p, "nanotron")
    body = {"dataset": {"dataset_folder": [path for path, _ in blend],
                        "dataset_weights": [weight for _, weight in blend]}}
    return _yaml("nanotron NanosetDatasetsArgs; paste under data_stages[*].data", body)


def _export_olmo_core(w: Mapping[str, float], p: DataPaths) -> str:
    # OLMo-core SourceMixtureList.from_yaml -> SourceMixtureDatasetConfig(source_list=...).
    # OLMo-core draws a source's tokens from its paths by token count, so shares are not written.
    _train_only(w, p, "olmo-core")
    sources = [{"source_name": d, "target_ratio": weight, "paths": [path for path, _ in p.shards(d)]}
               for d, weight in w.items() if weight > 0]
    return _yaml("OLMo-core SourceMixtureList (SourceMixtureConfig: source_name, target_ratio, paths; "
                 "optional max_repetition_ratio)", {"sources": sources})


# ----------------------------------------------------------------------------- parsing


def _weight(value: Any, what: str) -> float:
    try:
        weight = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise InputError(f"{what}: weight {value!r} is not a finite number >= 0")
    return weight


def _pairs(tokens: Any, what: str) -> Blend:
    if not isinstance(tokens, list) or not tokens or len(tokens) % 2:
        n = len(tokens) if isinstance(tokens, list) else type(tokens).__name__
        raise InputError(f"{what}: expected a list of 'weight prefix' pairs, got {n} items")
    return [(_check_path(tokens[i + 1], what), _weight(tokens[i], what)) for i in range(0, len(tokens), 2)]


def _zip(paths: Any, weights: Any, what: str) -> Blend:
    if not isinstance(paths, list) or not isinstance(weights, list) or not paths:
        raise InputError(f"{what}: expected non-empty lists of paths and of weights")
    if len(paths) != len(weights):
        raise InputError(f"{what}: {len(paths)} paths but {len(weights)} weights")
    return [(_check_path(path, what), _weight(weight, what)) for path, weight in zip(paths, weights)]


def _mapping(text: str, fmt: str) -> dict:
    try:
        obj = json.loads(text)  # JSON first: YAML chokes on some valid JSON (tab indents)
    except ValueError:
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{fmt} export does not parse as JSON or YAML: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{fmt} export: expected a mapping at the top level, got {type(obj).__name__}")
    return obj


def _get(obj: Any, keys: Sequence[str], fmt: str) -> Any:
    for key in keys:
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    raise InputError(f"{fmt} export: missing key {keys[0]!r}")


def _parse_megatron(text: str, p: DataPaths) -> dict[str, Blend]:
    return {"train": _pairs(text.split(), "megatron export")}


def _parse_megatron_per_split(text: str, p: DataPaths) -> dict[str, Blend]:
    obj, out = _mapping(text, "megatron-per-split"), {}
    for split in SPLITS:
        value = _get(obj, [split], "megatron-per-split")  # Megatron indexes all three keys
        if value is not None:
            tokens = value.split() if isinstance(value, str) else value
            out[split] = _pairs(tokens, f"megatron-per-split export, split {split!r}")
    if "train" not in out:
        raise InputError("megatron-per-split export: 'train' is null")
    return out


def _parse_megatron_deepspeed(text: str, p: DataPaths) -> dict[str, Blend]:
    try:
        tokens = shlex.split(text.replace("\\\n", " "))
    except ValueError as exc:
        raise InputError(f"megatron-deepspeed export does not parse as a shell line: {exc}") from exc
    flags = {"--data-path": "data", **{f"--{s}-data-path": s for s in SPLITS}}
    lists: dict[str, list[str]] = {}
    current = None
    for tok in tokens:
        if tok.startswith("--"):  # other flags and their values are skipped
            flag, eq, value = tok.partition("=")
            current = flags.get(flag)
            if current is not None:
                lists[current] = [value] if eq else []
        elif current is not None:
            lists[current].append(tok)
    if ("data" in lists) == ("train" in lists):
        raise InputError("megatron-deepspeed export: give exactly one of --data-path, --train-data-path")
    lists.setdefault("train", lists.pop("data", []))
    return {s: _pairs(v, f"megatron-deepspeed export, {s} split") for s, v in lists.items()}


def _parse_gpt_neox(text: str, p: DataPaths) -> dict[str, Blend]:
    obj, out = _mapping(text, "gpt-neox"), {}
    for split in SPLITS:
        paths = obj.get(f"{split}-data-paths", obj.get(f"{split}_data_paths"))
        if paths is not None:
            weights = obj.get(f"{split}-data-weights", obj.get(f"{split}_data_weights"))
            if weights is None and isinstance(paths, list):
                weights = [1.0] * len(paths)  # GPT-NeoX's own default
            out[split] = _zip(paths, weights, f"gpt-neox export, {split} split")
    if "train" not in out:
        raise InputError("gpt-neox export: missing key 'train-data-paths'")
    return out


def _parse_hf(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "hf")
    return {"train": _zip(_get(obj, ["datasets"], "hf"), _get(obj, ["probabilities"], "hf"), "hf export")}


def _parse_mosaicml(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "mosaicml")
    if "streams" not in obj:  # a whole llm-foundry config
        obj = _get(_get(obj, ["train_loader"], "mosaicml"), ["dataset"], "mosaicml")
    streams = _get(obj, ["streams"], "mosaicml")
    items = list(streams.values()) if isinstance(streams, dict) else streams
    if not isinstance(items, list) or not all(isinstance(s, dict) for s in items):
        raise InputError("mosaicml export: 'streams' must map names to {remote or local, proportion}")
    paths = [s.get("remote") or s.get("local") for s in items]
    return {"train": _zip(paths, [s.get("proportion") for s in items], "mosaicml export")}


def _parse_litgpt(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "litgpt")
    datasets = _get(obj, ["datasets"], "litgpt")
    if isinstance(datasets, list):
        datasets = [d.get("input_dir") if isinstance(d, dict) else d for d in datasets]
    return {"train": _zip(datasets, _get(obj, ["weights"], "litgpt"), "litgpt export")}


def _parse_nanotron(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "nanotron")
    if isinstance(obj.get("data_stages"), list) and obj["data_stages"]:  # a whole config: stage 0
        obj = _get(_get(obj["data_stages"][0], ["data"], "nanotron"), ["dataset"], "nanotron")
    elif "dataset_folder" not in obj:
        obj = _get(obj, ["dataset"], "nanotron")
    folder = _get(obj, ["dataset_folder"], "nanotron")
    if isinstance(folder, str):
        return {"train": [(_check_path(folder, "nanotron export"), 1.0)]}
    if isinstance(folder, dict):  # nanotron <= 0.5 form {folder: weight}
        return {"train": _zip(list(folder), list(folder.values()), "nanotron export")}
    if obj.get("dataset_weights") is None:
        raise InputError("nanotron export: dataset_weights missing, so nanotron weights folders by size")
    return {"train": _zip(folder, obj["dataset_weights"], "nanotron export")}


def _parse_olmo_core(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "olmo-core")
    obj = obj.get("source_list", obj)  # a serialised SourceMixtureDatasetConfig
    sources = _get(obj, ["sources", "source_configs"], "olmo-core")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, dict) for s in sources):
        raise InputError("olmo-core export: 'sources' must be a non-empty list of mappings")
    owner, blend = p.domain_of_path(), []
    for src in sources:
        what = f"olmo-core export, source {src.get('source_name')!r}"
        paths = src.get("paths")
        if not isinstance(paths, list) or not paths:
            raise InputError(f"{what}: 'paths' must be a non-empty list")
        _known(paths, p, "olmo-core")
        if len({owner[path] for path in paths}) > 1:
            raise InputError(f"{what}: its paths belong to several domains")
        # The source's whole ratio goes to its (single) domain, via its first path.
        blend.append((paths[0], _weight(src.get("target_ratio"), what)))
    return {"train": blend}


def _known(paths: Sequence[Any], p: DataPaths, fmt: str) -> None:
    owner = p.domain_of_path()
    for path in paths:
        if not isinstance(path, str) or path not in owner:
            raise InputError(f"{fmt} export names path {path!r}, which is not in data-paths file {p.source}")


class Format(NamedTuple):
    """How to write a mixture in one framework's terms, and how to read it back."""

    export: Callable[[Mapping[str, float], DataPaths], str]
    parse: Callable[[str, DataPaths], dict[str, Blend]]


FORMATS: dict[str, Format] = {
    "megatron": Format(_export_megatron, _parse_megatron),
    "megatron-data-args": Format(_export_megatron_data_args, _parse_megatron),
    "megatron-per-split": Format(_export_megatron_per_split, _parse_megatron_per_split),
    "megatron-deepspeed": Format(_export_megatron_deepspeed, _parse_megatron_deepspeed),
    "gpt-neox": Format(_export_gpt_neox, _parse_gpt_neox),
    "hf": Format(_export_hf, _parse_hf),
    "mosaicml": Format(_export_mosaicml, _parse_mosaicml),
    "litgpt": Format(_export_litgpt, _parse_litgpt),
    "nanotron": Format(_export_nanotron, _parse_nanotron),
    "olmo-core": Format(_export_olmo_core, _parse_olmo_core),
}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def export_mixture(weights: Mapping[str, float], paths: DataPaths, fmt: str) -> str:
    """Render ``weights`` ({domain: weight}, summing to 1) as ``fmt`` through the paths map."""
    exporter = _format(fmt)
    return exporter.export(_check_weights(weights, paths), paths)


def parse_export(text: str, fmt: str, paths: DataPaths) -> dict[str, float]:
    """Read an export back as normalised {domain: weight} over every domain of ``paths``
    (0.0 where absent), so an existing framework config can be checked against a mixture."""
    blends = _format(fmt).parse(text, paths)
    for blend in blends.values():  # eval splits too: a stray path there is a bug as well
        _known([path for path, _ in blend], paths, fmt)
    owner, sums = paths.domain_of_path(), {d: 0.0 for d in paths.domains}
    for path, weight in blends["train"]:
        sums[owner[path]] += weight
    total = math.fsum(sums.values())
    if total <= 0:
        raise InputError(f"{fmt} export: all train weights are 0")
    return {d: s / total for d, s in sums.items()}
