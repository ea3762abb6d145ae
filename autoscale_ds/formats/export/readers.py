"""Readers: one function per framework that reads an exported config back as blends of
``(path, weight)`` per split, so ``parse_export`` can check a config against a mixture."""

from __future__ import annotations

import json
import math
import re
import shlex
from typing import Any, Sequence

import yaml

from autoscale_ds.formats.datapaths import SPLITS, Blend, DataPaths, _check_path
from autoscale_ds.errors import InputError
from autoscale_ds.loaders import json_error_line, loads_json, loads_yaml, yaml_error_line


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
    """A config as JSON, else YAML; both strict: a key given twice is refused (the last
    one would silently win), and every problem is one line."""
    try:
        obj = loads_json(text)  # JSON first: YAML chokes on some valid JSON (tab indents)
    except json.JSONDecodeError:
        obj = _yaml_mapping(text, fmt)
    except RecursionError:
        raise InputError(f"{fmt} export: nested too deeply") from None
    except ValueError as exc:  # valid JSON syntax, but a duplicate key or NaN: YAML won't do
        raise InputError(json_error_line(exc, f"{fmt} export")) from None
    if not isinstance(obj, dict):
        raise InputError(f"{fmt} export: expected a mapping at the top level, got {type(obj).__name__}")
    return obj


def _yaml_mapping(text: str, fmt: str) -> Any:
    try:
        return loads_yaml(text)
    except RecursionError:
        raise InputError(f"{fmt} export: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{yaml_error_line(exc, f'{fmt} export')} (read as YAML: it is "
                         "not JSON)") from None


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


def _split_shell(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise InputError(f"megatron-deepspeed export does not parse as a shell line: {exc}") from exc


def _shell_words(text: str) -> list[str]:
    """The words of a shell command line, or of our bash array file (``NAME=(`` ... ``)``).
    Only leading comment lines are dropped: shlex would also cut a word at a '#' inside it."""
    lines = text.splitlines(keepends=True)
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)
    body = "".join(lines)
    words = _split_shell(body)
    if words and re.fullmatch(r"[A-Za-z_]\w*=\(", words[0]):
        if words[-1] != ")":
            raise InputError(f"megatron-deepspeed export: the array {words[0]} is not closed by ')'")
        return words[1:-1]
    # A pasted command line may be continued with backslash-newline (never inside our array).
    return _split_shell(body.replace("\\\n", " "))


def _parse_megatron_deepspeed(text: str, p: DataPaths) -> dict[str, Blend]:
    flags = {"--data-path": "data", **{f"--{s}-data-path": s for s in SPLITS}}
    lists: dict[str, list[str]] = {}
    current = None
    for tok in _shell_words(text):
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
    blend = _zip(_get(obj, ["datasets"], "hf"), _get(obj, ["probabilities"], "hf"), "hf export")
    lengths = obj.get("mean_document_tokens")
    if lengths is None:  # probabilities are the token weights (or per example, length unknown)
        return {"train": blend}
    if not isinstance(lengths, list) or len(lengths) != len(blend):
        raise InputError(f"hf export: 'mean_document_tokens' must list one length per dataset "
                         f"({len(blend)})")
    lengths = [_weight(x, "hf export, mean_document_tokens") for x in lengths]
    if not all(lengths):
        raise InputError("hf export: 'mean_document_tokens' must be positive")
    # Per-example probability back to token weight: times the mean document length.
    return {"train": [(path, prob * length) for (path, prob), length in zip(blend, lengths)]}


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


def _parse_litdata(text: str, p: DataPaths) -> dict[str, Blend]:
    obj = _mapping(text, "litdata")
    datasets = _get(obj, ["datasets"], "litdata")
    if isinstance(datasets, list):
        datasets = [d.get("input_dir") if isinstance(d, dict) else d for d in datasets]
    return {"train": _zip(datasets, _get(obj, ["weights"], "litdata"), "litdata export")}


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

