"""Turn a mixture ``{domain: weight}`` into the data-blend config of a training framework.

A mixture names domains; frameworks want file prefixes or folders with weights. The
paths map (``DataPaths``) bridges the two: per domain and split, an ordered list of
``(path, share)`` whose shares sum to 1, so each path gets ``domain weight * share``.
``parse_export`` inverts every exporter so a config can be checked against a mixture.
Floats are written with ``repr`` so a weight read back is bit-for-bit the one written.

Every Megatron-family output is safe for its documented use, or refused naming the domain
and path: ``megatron`` (pasted, or ``$(cat FILE)`` unquoted) only takes paths no shell
interprets; ``megatron-data-args`` (read with ``split()``) no whitespace; ``megatron-deepspeed``
is a bash array to ``source``, every path quoted; command lines take no path starting with '-'.
"""


from __future__ import annotations

import json
import logging
import math
import re
import shlex
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import yaml

from autoscale_ds.datapaths import (SPLITS, Blend, DataPaths, _check_path, _is_number,
                                    data_paths_from_mapping, load_data_paths, with_manifest_stats)
from autoscale_ds.errors import InputError
from autoscale_ds.loaders import (QuotingDumper, json_error_line, loads_json, loads_yaml,
                                  yaml_error_line)

log = logging.getLogger(__name__)

__all__ = ["DEPRECATED_FORMATS", "FORMATS", "DataPaths", "data_paths_from_mapping",
           "epoch_cap", "export_mixture", "load_data_paths", "parse_export", "with_manifest_stats"]


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


# What each Megatron-family output can carry. A prefix is refused, naming its domain, when
# the documented way of use would not hand Megatron exactly that string.
_SHELL_INERT = re.compile(r"[\w@%+=:,./-]*")  # no quoting needed in sh/bash (\w: any script)


def _refuse(fmt: str, path: str, paths: DataPaths, why: str, instead: str) -> None:
    domain = paths.domain_of_path()[path]
    raise InputError(f"{fmt}: path {path!r} of domain {domain!r} (data-paths file {paths.source}) "
                     f"{why}; {instead}")


def _no_whitespace(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # Megatron-LM reads --data-args-path as f.read().split(): whitespace splits a prefix.
    for path, _ in blend:
        if any(c.isspace() for c in path):
            _refuse(fmt, path, paths, "contains whitespace, which Megatron splits prefixes on",
                    "rename it, or use --format megatron-per-split (JSON lists keep it)")
    return blend


def _no_leading_dash(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # argparse takes a value that starts with '-' for an option (or an abbreviation of one).
    for path, _ in blend:
        if path.startswith("-"):
            _refuse(fmt, path, paths, "starts with '-', so Megatron's argparse would read it as an "
                    "option", "write it as ./" + path + " or use --format megatron-data-args")
    return blend


def _shell_inert(blend: Blend, paths: DataPaths, fmt: str) -> Blend:
    # The `megatron` line is pasted or spliced unquoted ($(cat FILE)): any character the shell
    # interprets ($ ` ' " \\ ; & | < > ( ) * ? [ ~ # ! { } whitespace ...) would change the argv.
    for path, _ in _no_leading_dash(blend, paths, fmt):
        if not _SHELL_INERT.fullmatch(path):
            bad = next(c for c in path if not _SHELL_INERT.fullmatch(c))
            _refuse(fmt, path, paths, f"contains {bad!r}, which a shell interprets on a command line",
                    "use --format megatron-data-args (a file Megatron reads itself) or "
                    "megatron-deepspeed (a bash array with every path quoted)")
    return blend


def _flat(blend: Blend) -> list[str]:
    return [tok for path, w in blend for tok in (_num(w), path)]


def _yaml(comment: str, obj: Any) -> str:
    lines = "".join(f"# {line}\n" for line in comment.splitlines())
    body = yaml.dump(obj, Dumper=QuotingDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)
    return lines + body


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


class Options(NamedTuple):
    """What an exporter needs besides the weights and the paths map."""

    seed: int = 0
    """Sampling seed written where the target takes one (hf, litdata)."""
    epoch_cap: dict[str, float] = {}
    """Per domain, passes over its train data the mixture allows (olmo-core)."""
    epoch_cap_source: str = ""
    """Where ``epoch_cap`` comes from, written into the output."""
    total_tokens: float | None = None
    """The mixture's token budget, to check ``epoch_cap`` against the data (olmo-core)."""


def _export_megatron(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --data-path (megatron.core.datasets.utils.get_blend_from_list), pasted or
    # spliced unquoted: every token must reach argv unchanged.
    return " ".join(_flat(_shell_inert(_train_only(w, p, "megatron"), p, "megatron"))) + "\n"


def _export_megatron_data_args(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --data-args-path: read as f.read().split(), so no comments are possible.
    blend = _no_whitespace(_train_only(w, p, "megatron-data-args"), p, "megatron-data-args")
    return "".join(f"{_num(weight)} {path}\n" for path, weight in blend)


def _export_megatron_per_split(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-LM --per-split-data-args-path: all three keys are read; null means "no such
    # split" (get_blend_from_list(None) -> None), whereas an empty list crashes it. Lists are
    # used as they are (only a string is split), so any prefix survives.
    blends = _split_blends(w, p, "megatron-per-split")
    return _json({s: _flat(blends[s]) if s in blends else None for s in SPLITS})


DEEPSPEED_ARRAY = "DATA_ARGS"


def _export_megatron_deepspeed(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # Megatron-DeepSpeed --data-path (or --{train,valid,test}-data-path), nargs='*' pairs,
    # as a bash array: `source` the file, pass "${DATA_ARGS[@]}". Each element is quoted
    # (shlex.quote: single quotes, inside which bash expands nothing), so any path except
    # one argparse takes for an option reaches argv as it is.
    blends = _split_blends(w, p, "megatron-deepspeed")
    for blend in blends.values():
        _no_leading_dash(blend, p, "megatron-deepspeed")
    if p.has_split("valid") or p.has_split("test"):
        groups = [(f"--{s}-data-path", b) for s, b in blends.items()]
    else:  # one blend, cut up by --split
        groups = [("--data-path", blends["train"])]
    lines = [f"  {flag}" + "".join(f"\n    {_num(wt)} {shlex.quote(path)}" for path, wt in b)
             for flag, b in groups]
    return (f"# Megatron-DeepSpeed data arguments. Use: source THIS_FILE; "
            f'pretrain_gpt.py ... "${{{DEEPSPEED_ARRAY}[@]}}"\n'
            f"{DEEPSPEED_ARRAY}=(\n" + "\n".join(lines) + "\n)\n")


def _neox_fill(blends: dict[str, Blend]) -> list[str]:
    """GPT-NeoX requires all three splits. A missing test split reuses valid (held-out data
    measures held-out loss); a missing valid reuses test, else train. Returns the notes."""
    notes = []
    for split, donors in (("valid", ("test", "train")), ("test", ("valid", "train"))):
        if split not in blends:
            donor = next(d for d in donors if d in blends)
            log.warning("gpt-neox needs %s-data-paths; the paths map has none, so it reuses the "
                        "%s paths", split, donor)
            notes.append(f"{split} reuses the {donor} paths (the paths map gives no {split} paths)")
            blends[split] = blends[donor]
    return notes


def _export_gpt_neox(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # GPT-NeoX neox_args train/valid/test-data-paths + -data-weights (all three required).
    blends = _split_blends(w, p, "gpt-neox")
    notes = _neox_fill(blends)
    note = "; ".join(["GPT-NeoX data config (neox_args: {train,valid,test}-data-paths / -data-weights)",
                      *notes])
    obj: dict[str, list] = {}
    for split in SPLITS:
        obj[f"{split}-data-paths"] = [path for path, _ in blends[split]]
        obj[f"{split}-data-weights"] = [weight for _, weight in blends[split]]
    return _yaml(note, obj)


def _mean_document_tokens(blend: Blend, p: DataPaths) -> list[float] | None:
    """Mean document length of each path's domain, or None unless every one is known."""
    owner = p.domain_of_path()
    stats = [p.train_stats.get(owner[path]) for path, _ in blend]
    return None if any(s is None for s in stats) else [s.mean_document_tokens for s in stats]


def _export_hf(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # datasets.interleave_datasets(datasets, probabilities, seed, stopping_strategy) draws one
    # *example* at a time, while our weights are token fractions: a domain of long documents
    # would get more tokens than its weight. probability ~ weight / mean document tokens.
    blend = _train_only(w, p, "hf")
    lengths = _mean_document_tokens(blend, p)
    if lengths is None:
        log.warning("hf: document lengths of %s are unknown, so the probabilities are the token "
                    "weights themselves; a domain's token share will follow its mean document "
                    "length. Give a domains manifest (as the paths map, or load_data_paths(..., "
                    "manifest=...)) to convert.", p.source)
        per_example = [weight for _, weight in blend]
        what = ("token weights, unconverted: document lengths unknown (no domains manifest), "
                "so each domain's token share scales with its mean document length")
    else:
        per_example = [weight / length for (_, weight), length in zip(blend, lengths)]
        what = ("per example: token weight / mean document tokens (mean_document_tokens, from "
                f"domains manifest {p.source}), renormalised")
    total = math.fsum(per_example)
    obj = {"datasets": [path for path, _ in blend],
           "probabilities": [x / total for x in per_example],
           "seed": o.seed, "stopping_strategy": "first_exhausted", "probabilities_are": what}
    if lengths is not None:
        obj["mean_document_tokens"] = lengths
    return _json(obj)


def _export_mosaicml(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
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


def _export_litdata(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # litdata.CombinedStreamingDataset(datasets=[StreamingDataset(input_dir=...)], seed=...,
    # weights=..., iterate_over_all=False). Its weights are per item: with litdata's
    # TokensLoader (as litgpt pretrains) an item is a fixed-size token block, so token weights.
    blend = _train_only(w, p, "litdata")
    return _json({"datasets": [{"input_dir": path} for path, _ in blend],
                  "weights": [weight for _, weight in blend], "seed": o.seed,
                  "iterate_over_all": False})


def _export_nanotron(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # nanotron NanosetDatasetsArgs(dataset_folder=[...], dataset_weights=[...]); the older
    # {folder: weight} form is rejected by current nanotron's strict config loading.
    blend = _train_only(w, p, "nanotron")
    body = {"dataset": {"dataset_folder": [path for path, _ in blend],
                        "dataset_weights": [weight for _, weight in blend]}}
    return _yaml("nanotron NanosetDatasetsArgs; paste under data_stages[*].data", body)


def _olmo_source(domain: str, weight: float, p: DataPaths, o: Options) -> dict[str, Any]:
    # OLMo-core takes at most available * max_source_fraction * max_repetition_ratio tokens of a
    # source (the ratio must be >= 1, the fraction in (0, 1]): an epoch cap E is ratio E when
    # E >= 1, fraction E when E < 1. No cap known: 1.0, OLMo-core's default (no repetition).
    cap = o.epoch_cap.get(domain, 1.0)
    source = {"source_name": domain, "target_ratio": weight, "paths": [path for path, _ in p.shards(domain)],
              "max_repetition_ratio": max(1.0, cap)}
    if cap < 1.0:
        source["max_source_fraction"] = cap
    stats = p.train_stats.get(domain)
    if stats is not None and o.total_tokens is not None and weight * o.total_tokens > cap * stats.tokens:
        log.warning("olmo-core: domain %r needs %.3g passes over its %d train tokens at %.4g tokens, "
                    "more than the %g allowed (%s); OLMo-core will refuse it (Insufficient tokens)",
                    domain, weight * o.total_tokens / stats.tokens, stats.tokens, o.total_tokens, cap,
                    o.epoch_cap_source or "no epoch cap known")
    return source


def _export_olmo_core(w: Mapping[str, float], p: DataPaths, o: Options) -> str:
    # OLMo-core SourceMixtureList.from_yaml -> SourceMixtureDatasetConfig(source_list=...).
    # OLMo-core draws a source's tokens from its paths by token count, so shares are not written.
    _train_only(w, p, "olmo-core")
    sources = [_olmo_source(d, weight, p, o) for d, weight in w.items() if weight > 0]
    cap = o.epoch_cap_source or ("no epoch cap in the mixture: 1.0, OLMo-core's default "
                                 "(each source read at most once)")
    return _yaml("OLMo-core SourceMixtureList (SourceMixtureConfig: source_name, target_ratio, paths, "
                 f"max_repetition_ratio)\nmax_repetition_ratio: {cap}", {"sources": sources})


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
